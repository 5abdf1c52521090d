"""The demo scenario: a simulated homeserver, a real ``synkafka consume``, presence.

``synkafka demo`` (:mod:`adapter.cli.demo`) starts the local services and hands their
addresses to :class:`DemoScenario`, which runs the main job end to end and returns a
:class:`DemoReport`:

1. **Setup.** Synapse's stream tables in the database, every topic, a presence
   writer's view (:class:`~adapter.runtime.presence_follower.PresenceFollower`, with a
   shortened expiry), two ``synkafka presence track`` processes (``sync1``,
   ``sync2``), and some *history*: rows written before the consumer ever started.
2. **Live.** A simulated homeserver (:class:`SimulatedHomeserver`, in a thread)
   writes rows to the database and publishes each token as one RDATA record, on
   eight or nine streams, with **two writers on ``events``**. ``synkafka consume``
   runs as a real child process with ``--db`` and ``--output`` (JSON lines).
3. **Gap.** At 30% of the rows the consumer gets SIGTERM (it commits and exits 0);
   the homeserver keeps writing. ``sync1`` gets SIGTERM (it publishes its clear)
   and, a little later, ``sync2`` gets SIGKILL (only the expiry can remove it).
4. **Catch-up.** At 60% the consumer starts again: it resumes from its committed
   POSITION, reads the gap from the database (``source: backfill``) and goes live.
   The homeserver then re-sends its last few ``events`` records, as a writer does
   after a reconnect; the consumer must drop every one of them.
5. **Drain and check.** The homeserver stops; the demo waits until every token is
   delivered and ``synkafka lag`` (:func:`~adapter.runtime.lag.measure_lag`) shows
   zero lag in tokens and messages, stops the consumer, and compares the
   database's rows (and the typing rows, which have no table) with the JSON lines.

Process handling: every child is started through the injected :data:`Spawn`
(the CLI passes :class:`~adapter.devstack.services._process.ManagedProcess`, which sets the
parent-death signal, so start the scenario from the main thread) and is stopped in
``finally``, also on Ctrl-C. The runtime layer may not import the local stack, hence
the injection.

The terminal view (:class:`LiveView`) redraws a block of lines in place; off a
terminal :class:`PlainView` prints one line every few seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol

from adapter.cli.demo_sizes import (
    DEFAULT_DURATION_S,
    DEFAULT_ROWS,
    QUICK_DURATION_S,
    QUICK_ROWS,
)
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.errors import AdapterError, ServiceError
from adapter.core.presence import InstanceSummary
from adapter.core.rows import row_from_wire, row_to_wire
from adapter.devstack.writer import SynapseWriter, Written
from adapter.io.db.connection import DbConnection, connect
from adapter.io.db.sources import EventsSource, builtin_registry
from adapter.io.db.synapse_schema import create_synapse_tables
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import Consumer
from adapter.io.kafka.producer import Producer
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.lag import LagRow, measure_lag
from adapter.runtime.presence_follower import PresenceFollower
from adapter.runtime.publisher import Publisher

__all__ = [
    "DEFAULT_DURATION_S",
    "DEFAULT_ROWS",
    "QUICK_DURATION_S",
    "QUICK_ROWS",
    "ChildProcess",
    "DemoReport",
    "DemoScenario",
    "DemoSettings",
    "Display",
    "LiveView",
    "PlainView",
    "SimulatedHomeserver",
    "Spawn",
    "StreamTotals",
]

logger = logging.getLogger(__name__)


EVENT_WRITERS: Final = ("event_persister1", "event_persister2")
MAIN_WRITER: Final = "master"
CONSUMER_NAME: Final = "demo-consumer"

# Where in the run (share of the rows written) each step happens.
_STOP_CONSUMER_AT: Final = 0.30
_KILL_PRESENCE_AT: Final = 0.45
_RESTART_CONSUMER_AT: Final = 0.60
# History rows per (stream, writer), written before the consumer first starts.
_HISTORY: Final = 5
# ``events`` records the homeserver re-sends after the consumer's restart.
_RESEND: Final = 25
# One slot per write, repeated: the stream mix (``caches`` only on PostgreSQL).
_MIX: Final = (
    "events",
    "receipts",
    "events",
    "presence",
    "events",
    "account_data",
    "events",
    "receipts",
    "events",
    "to_device",
    "events",
    "device_lists",
    "events",
    "typing",
    "events",
    "push_rules",
    "receipts",
    "presence",
    "account_data",
    "caches",
)
_ROOMS: Final = ("!lobby", "!dev", "!ops", "!random")
_HEARTBEAT_S: Final = 1.0
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
_DROPPED_RE: Final = re.compile(r"^synkafka_rows_dropped_total\{([^}]*)\}\s+(\S+)")

# The demo's own Kafka clients: no log line for a closed connection (the broker stops
# at the end) or for the retries of a broker that has just started.
_QUIET: Final = {"log.connection.close": "false", "log_level": "3"}

Key = tuple[str, str, int]
"""``(stream, writer, token)``."""


# -- settings and injected process handling ---------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Everything the scenario needs from the outside.

    Attributes:
        bootstrap: ``bootstrap.servers`` of the broker.
        dsn: Synapse's database (``sqlite:///...`` or ``postgresql://...``); empty,
            its tables are created here.
        run_dir: where the JSON lines and the children's logs go.
        python: the interpreter that runs ``python -m adapter`` children.
        rows: about how many rows to write after the history.
        duration_s: how long the writing takes (the homeserver paces itself).
        presence_expiry_s: the presence writer's expiry (Synapse's is 5 minutes).
        server_name: the simulated homeserver's name (topics: ``synapse.<name>``).
        resend: ``events`` records re-sent after the consumer's restart.
    """

    bootstrap: str
    dsn: str
    run_dir: Path
    python: str
    rows: int = DEFAULT_ROWS
    duration_s: float = DEFAULT_DURATION_S
    presence_expiry_s: float = 5.0
    server_name: str = "demo.local"
    resend: int = _RESEND

    @property
    def prefix(self) -> str:
        """The topic prefix."""
        return topics.default_prefix(self.server_name)

    @property
    def engine(self) -> str:
        """``PostgreSQL`` or ``SQLite``, for humans."""
        return "PostgreSQL" if self.dsn.startswith("postgres") else "SQLite"

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams the homeserver writes (``caches`` exists only on PostgreSQL)."""
        names = dict.fromkeys(_MIX)
        if self.engine != "PostgreSQL":
            names.pop("caches")
        return tuple(names)


class ChildProcess(Protocol):
    """A child process the demo started (``ManagedProcess`` fits)."""

    @property
    def pid(self) -> int:
        """The process id."""
        ...

    @property
    def returncode(self) -> int | None:
        """The exit code, or ``None`` while it runs."""
        ...

    def running(self) -> bool:
        """Whether it still runs."""
        ...

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; return the exit code."""
        ...

    def kill(self) -> int:
        """SIGKILL at once; return the exit code."""
        ...


Spawn = Callable[[Sequence[str], Path, str], ChildProcess]
"""Start ``argv`` with stdout and stderr appended to a log file; ``name`` labels it."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _lag_text(tokens: int | None, messages: int | None) -> str:
    """A report's lag line: both figures, or ``unknown`` when one was not measured."""
    if tokens is None or messages is None:
        return "unknown"
    return f"{tokens} tokens, {messages} messages"


def _all_passed(checks: Sequence[tuple[str, bool]]) -> bool:
    """Whether there is at least one check and every check passed."""
    return bool(checks) and all(passed for _, passed in checks)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _canonical(wire_rows: Sequence[Any]) -> tuple[str, ...]:
    """Rows of one token in a form that compares equal across JSON round trips."""
    return tuple(sorted(_JSON.encode(r) for r in wire_rows))


# -- the simulated homeserver -----------------------------------------------------------


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
        self._mix = tuple(s for s in _MIX if s in streams) or ("events",)
        self._writers = {
            name: SynapseWriter(conn, name) for name in (*EVENT_WRITERS, MAIN_WRITER)
        }
        self._lock = threading.Lock()
        self._n = 0
        self._event_turn = 0
        self._last_event_id = "$none"
        self._recent_events: deque[_Published] = deque(maxlen=max(_RESEND, 64))
        self._resend_wanted = 0
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
                self.typing_log[(stream, writer, token)] = _canonical(
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
        """Ask the writing thread to re-publish its last ``count`` events records."""
        with self._lock:
            self._resend_wanted = count

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


# -- what the consumer delivered --------------------------------------------------------


class DeliveryLog:
    """Follows the consumer's JSON lines file and keeps what was delivered.

    Args:
        path: the ``--output`` file of ``synkafka consume``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.rows: Counter[str] = Counter()
        """Rows delivered per stream."""
        self.backfill_rows: Counter[str] = Counter()
        """Of which read from the database."""
        self.tokens: dict[tuple[str, str], int] = {}
        """The highest delivered token per (stream, writer)."""
        self.delivered: dict[Key, tuple[str, ...]] = {}
        """Canonical rows per delivered (stream, writer, token)."""
        self.twice: list[Key] = []
        """Updates delivered more than once."""

    def poll(self) -> int:
        """Read the lines appended since the last call; return how many."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._apply(json.loads(line))
        return len(lines)

    def _apply(self, update: dict[str, Any]) -> None:
        stream, writer, token = update["stream"], update["writer"], update["token"]
        key = (stream, writer, int(token))
        rows = update["rows"]
        if key in self.delivered:
            self.twice.append(key)
        self.delivered[key] = _canonical(rows)
        self.rows[stream] += len(rows)
        if update["source"] == "backfill":
            self.backfill_rows[stream] += len(rows)
        self.tokens[(stream, writer)] = max(token, self.tokens.get((stream, writer), 0))


# -- the children -----------------------------------------------------------------------


class ConsumerChild:
    """``synkafka consume`` as a child process, with its /metrics and /ready.

    Args:
        spawn: starts processes.
        settings: the demo's settings.
        output: the JSON lines file.
    """

    def __init__(self, spawn: Spawn, settings: DemoSettings, output: Path) -> None:
        self._spawn = spawn
        self._settings = settings
        self._output = output
        self.process: ChildProcess | None = None
        self.port = 0
        self.runs = 0
        self.exit_codes: list[int] = []
        self.dropped_by_run: dict[int, int] = {}
        self.log_path = settings.run_dir / "consumer.log"

    def argv(self) -> list[str]:
        """The command line (also shown to the user)."""
        s = self._settings
        argv = [
            s.python,
            "-m",
            "adapter",
            "consume",
            "--bootstrap-servers",
            s.bootstrap,
            "--server-name",
            s.server_name,
            "--instance-name",
            CONSUMER_NAME,
            "--db",
            s.dsn,
            "--output",
            str(self._output),
            "--metrics-port",
            str(self.port),
            "--commit-interval",
            "0.5",
            "--no-progress",
            "--log-level",
            "WARNING",
        ]
        for stream in s.streams:
            argv += ["--stream", stream]
        return argv

    def start(self) -> None:
        """Start a new run on a fresh metrics port."""
        self.port = _free_port()
        self.runs += 1
        self.process = self._spawn(self.argv(), self.log_path, "consume")

    def running(self) -> bool:
        """Whether the current run is alive."""
        return self.process is not None and self.process.running()

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (urllib.error.URLError, OSError):
            return 0, ""

    def ready(self) -> bool:
        """Whether /ready says caught up on every stream it set up.

        An empty ``streams`` map means the consumer has not set up yet (``/ready``
        answers 200 then as well), so it does not count as ready here.
        """
        if not self.running():
            return False
        status, body = self._get("/ready")
        if status != 200:
            return False
        try:
            doc = json.loads(body)
        except ValueError:
            return False
        return bool(doc.get("ready")) and bool(doc.get("streams"))

    def scrape_dropped(self) -> None:
        """Record this run's ``synkafka_rows_dropped_total{reason="duplicate"}``."""
        status, text = self._get("/metrics")
        if status != 200:
            return
        total = 0.0
        for line in text.splitlines():
            m = _DROPPED_RE.match(line)
            if m and 'reason="duplicate"' in m.group(1):
                total += float(m.group(2))
        self.dropped_by_run[self.runs] = int(total)

    @property
    def dropped(self) -> int:
        """Duplicates dropped over every run (as last scraped)."""
        return sum(self.dropped_by_run.values())

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the current run; return its exit code."""
        if self.process is None:
            return None
        self.scrape_dropped()
        code = self.process.stop(timeout_s)
        self.exit_codes.append(code)
        self.process = None
        return code


@dataclass(slots=True)
class PresenceChild:
    """One ``synkafka presence track`` process and what became of it.

    Attributes:
        name: its instance name (``sync1``...).
        users: the users it holds syncs open for.
        process: the child.
        log_path: its stdout and stderr.
        instance_id: the random ID it announced.
        stopped_at: when it got SIGTERM or SIGKILL (monotonic).
        how: ``SIGTERM`` or ``SIGKILL`` once stopped.
        exit_code: its exit code once stopped.
        gone_after_s: seconds from the signal until the presence writer dropped it.
        cleared: whether it reported its clear as acknowledged.
    """

    name: str
    users: tuple[str, ...]
    process: ChildProcess
    log_path: Path
    instance_id: str | None = None
    stopped_at: float | None = None
    how: str | None = None
    exit_code: int | None = None
    gone_after_s: float | None = None
    cleared: bool = False

    def read_log(self) -> None:
        """Pick up the instance ID and the clear from the child's JSON lines."""
        try:
            lines = self.log_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if "instance_id" in doc and self.instance_id is None:
                    self.instance_id = str(doc["instance_id"])
                if "cleared" in doc:
                    self.cleared = True


# -- lag --------------------------------------------------------------------------------


class LagSampler:
    """Measures the consumer group's lag (like ``synkafka lag``) in a thread.

    Args:
        settings: the demo's settings.
        interval_s: pause between samples.
    """

    def __init__(self, settings: DemoSettings, interval_s: float = 1.0) -> None:
        kafka = KafkaSettings(bootstrap_servers=settings.bootstrap, overrides=_QUIET)
        self._admin: Admin | None = Admin(kafka, timeout_s=10.0)
        self._consumer = Consumer(
            kafka,
            f"{settings.prefix}.demo-lag-reader",
            client_id="synkafka-demo-lag",
            # measure_lag assigns this consumer and then asks for metadata and
            # watermarks: the broker answers those only after the pending fetch,
            # which waits up to fetch.wait.max.ms (500 ms by default) on an idle
            # partition. 10 ms makes one measurement take 0.3 s instead of 10 s.
            extra={"fetch.wait.max.ms": "10"},
        )
        self._prefix = settings.prefix
        self._group = topics.consumer_group(settings.prefix, CONSUMER_NAME)
        self._streams = settings.streams
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._rows: list[LagRow] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def measure(self) -> list[LagRow]:
        """One measurement now (not thread-safe with the background thread)."""
        if self._admin is None:
            raise AdapterError("the lag sampler is closed")
        return measure_lag(
            self._admin, self._consumer, self._prefix, [self._group], self._streams
        )

    def record(self, rows: list[LagRow]) -> None:
        """Keep ``rows`` as the latest sample (a measurement taken outside the thread)."""
        with self._lock:
            self._rows = list(rows)

    def latest(self) -> list[LagRow]:
        """The last background sample."""
        with self._lock:
            return list(self._rows)

    def start(self) -> None:
        """Sample in a background thread until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name="demo-lag", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop the background thread (so :meth:`measure` may be called)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.measure()
            except AdapterError as exc:
                logger.debug("lag sample failed: %s", exc)
            else:
                with self._lock:
                    self._rows = rows
            self._stop.wait(self._interval_s)

    def close(self) -> None:
        """Stop sampling, close the reader and drop the admin client.

        librdkafka destroys a client when it is collected; one kept alive would keep
        reconnecting (and logging) after the broker stopped.
        """
        self.pause()
        self._consumer.close()
        self._admin = None


# -- display ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamTotals:
    """One stream's line in the view and the summary.

    Attributes:
        stream: the stream name.
        writers: how many writers wrote it.
        written: rows written after the history.
        delivered: rows in the JSON lines.
        backfill: of which from the database.
        lag_tokens: tokens published but not yet delivered, over its writers.
        lag_messages: records not yet committed by the consumer group, or None
            before the first measurement.
    """

    stream: str
    writers: int
    written: int
    delivered: int
    backfill: int
    lag_tokens: int
    lag_messages: int | None


@dataclass(frozen=True, slots=True)
class Frame:
    """What the progress view shows at one moment.

    Attributes:
        elapsed_s: seconds since the scenario started.
        phase: what is happening, in words.
        streams: one line per stream.
        consumer: the consumer's state, in words.
        presence: one phrase per presence instance.
    """

    elapsed_s: float
    phase: str
    streams: tuple[StreamTotals, ...]
    consumer: str
    presence: tuple[str, ...]


class Display(Protocol):
    """Where the scenario reports progress."""

    def event(self, message: str) -> None:
        """A step happened (printed once, above the live block)."""
        ...

    def update(self, frame: Frame) -> None:
        """The state changed (redraw or, now and then, print a line)."""
        ...

    def close(self) -> None:
        """The run is over: leave the last state on screen."""
        ...


def _totals_line(t: StreamTotals) -> str:
    msgs = "-" if t.lag_messages is None else str(t.lag_messages)
    return (
        f"  {t.stream:<14}{t.writers:>8}{t.written:>9}{t.delivered:>11}"
        f"{t.backfill:>10}{t.lag_tokens:>12}{msgs:>10}"
    )


def _sum_totals(streams: Sequence[StreamTotals]) -> StreamTotals:
    known = [t.lag_messages for t in streams if t.lag_messages is not None]
    return StreamTotals(
        "total",
        sum(t.writers for t in streams),
        sum(t.written for t in streams),
        sum(t.delivered for t in streams),
        sum(t.backfill for t in streams),
        sum(t.lag_tokens for t in streams),
        sum(known) if known else None,
    )


_HEADER: Final = (
    f"  {'stream':<14}{'writers':>8}{'written':>9}{'delivered':>11}"
    f"{'backfill':>10}{'lag tokens':>12}{'lag msgs':>10}"
)


class LiveView:
    """Redraws a block of lines in place on a terminal (ANSI cursor movement).

    Args:
        out: the terminal.
        min_interval_s: the shortest time between two redraws.
    """

    def __init__(self, out: IO[str], min_interval_s: float = 0.2) -> None:
        self._out = out
        self._drawn = 0
        self._last: Frame | None = None
        self._last_draw = 0.0
        self._min_interval_s = min_interval_s

    def _erase(self) -> None:
        if self._drawn:
            self._out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, frame: Frame) -> None:
        lines = [
            f"\x1b[1m{frame.elapsed_s:6.1f} s  {frame.phase}\x1b[0m",
            _HEADER,
            *(_totals_line(t) for t in frame.streams),
            _totals_line(_sum_totals(frame.streams)),
            f"  consumer  {frame.consumer}",
            *(
                f"  {'presence' if i == 0 else '':<8}  {p}"
                for i, p in enumerate(frame.presence)
            ),
        ]
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()
        self._drawn = len(lines)

    def event(self, message: str) -> None:
        """Print ``message`` above the block and redraw the block under it."""
        self._erase()
        self._out.write(message + "\n")
        if self._last is not None:
            self._draw(self._last)
        self._out.flush()

    def update(self, frame: Frame) -> None:
        """Redraw, at most every ``min_interval_s``."""
        self._last = frame
        now = time.monotonic()
        if now - self._last_draw < self._min_interval_s:
            return
        self._last_draw = now
        self._erase()
        self._draw(frame)

    def close(self) -> None:
        """Draw the last frame once more and leave it."""
        if self._last is not None:
            self._erase()
            self._draw(self._last)
        self._drawn = 0


class PlainView:
    """Prints one plain progress line every ``interval_s`` (logs, CI, pipes).

    Args:
        out: where to print.
        interval_s: seconds between progress lines.
    """

    def __init__(self, out: IO[str], interval_s: float = 3.0) -> None:
        self._out = out
        self._interval_s = interval_s
        self._next = 0.0

    def event(self, message: str) -> None:
        """Print ``message``."""
        self._out.write(message + "\n")
        self._out.flush()

    def update(self, frame: Frame) -> None:
        """Print a progress line if one is due."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval_s
        t = _sum_totals(frame.streams)
        msgs = "?" if t.lag_messages is None else str(t.lag_messages)
        self._out.write(
            f"[{frame.elapsed_s:6.1f} s] {frame.phase}: written {t.written}, "
            f"delivered {t.delivered} (backfill {t.backfill}), lag {t.lag_tokens} "
            f"tokens / {msgs} messages; consumer {frame.consumer}; "
            f"presence: {'; '.join(frame.presence)}\n"
        )
        self._out.flush()

    def close(self) -> None:
        """Nothing to tidy up."""


# -- the report -------------------------------------------------------------------------


@dataclass(slots=True)
class DemoReport:
    """The outcome of a run: numbers, per-stream lines and the checks.

    Attributes:
        engine: ``SQLite`` or ``PostgreSQL``.
        streams: per-stream totals at the end.
        history_rows: rows written before the consumer first started.
        written: rows written after the history.
        delivered: rows in the JSON lines.
        from_backfill: of which read from the database.
        resent: records the homeserver published twice on purpose.
        dropped: duplicate rows the consumer dropped (its metric).
        twice: updates delivered more than once.
        lost: rows in the database (or typing rows) missing from the JSON lines.
        unexpected: delivered rows the database does not hold.
        db_rows: rows the database holds after the history.
        lag_tokens: final lag in tokens over every stream (None: unknown).
        lag_messages: final lag in messages over every partition (None: unknown).
        consumer_exits: exit codes of the consumer's runs.
        catch_up_s: seconds from the restart until the consumer was ready again.
        presence: one sentence per presence instance.
        writing_s: seconds the homeserver spent writing.
        elapsed_s: seconds the scenario took.
        output: the JSON lines file.
        checks: ``(what, passed)`` per check.
    """

    engine: str
    streams: list[StreamTotals] = field(default_factory=list)
    history_rows: int = 0
    written: int = 0
    delivered: int = 0
    from_backfill: int = 0
    resent: int = 0
    dropped: int = 0
    twice: int = 0
    lost: int = 0
    unexpected: int = 0
    db_rows: int = 0
    lag_tokens: int | None = None
    lag_messages: int | None = None
    consumer_exits: list[int] = field(default_factory=list)
    catch_up_s: float | None = None
    presence: list[str] = field(default_factory=list)
    writing_s: float = 0.0
    elapsed_s: float = 0.0
    output: Path | None = None
    checks: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed (and there was at least one)."""
        return _all_passed(self.checks)

    def lines(self) -> list[str]:
        """The summary, ready to print."""
        lag = _lag_text(self.lag_tokens, self.lag_messages)
        exits = ", ".join(str(c) for c in self.consumer_exits) or "-"
        out = [
            f"Summary ({self.engine}; {len(self.streams)} streams, two writers on events)",
            _HEADER,
            *(_totals_line(t) for t in self.streams),
            _totals_line(_sum_totals(self.streams)),
            "",
            f"  rows written          {self.written:>7}   (after {self.history_rows} rows of history)",
            f"  rows delivered        {self.delivered:>7}   JSON lines in {self.output}",
            f"  rows from backfill    {self.from_backfill:>7}   read from the database after the restart",
            (
                f"  duplicates dropped    {self.dropped:>7}   ({self.resent} re-sent on purpose, "
                f"{max(0, self.dropped - self.resent)} overlapped the restart's backfill)"
            ),
            f"  delivered twice       {self.twice:>7}",
            f"  lost rows             {self.lost:>7}   (database and typing rows missing from the JSON lines)",
            f"  unexpected rows       {self.unexpected:>7}",
            f"  lag                   {lag}",
            f"  consumer exit codes   {exits}   (SIGTERM twice)"
            + (
                f"; caught up {self.catch_up_s:.1f} s after the restart"
                if self.catch_up_s is not None
                else ""
            ),
            *(
                f"  {'presence' if i == 0 else '':<20}  {p}"
                for i, p in enumerate(self.presence)
            ),
            f"  elapsed               {self.elapsed_s:.1f} s (writing {self.writing_s:.1f} s)",
            "",
        ]
        failed = [what for what, passed in self.checks if not passed]
        if failed:
            out.append("FAILED: " + "; ".join(failed))
        else:
            out.append(f"All {len(self.checks)} checks passed.")
        return out


# -- the scenario -----------------------------------------------------------------------


class DemoScenario:
    """Runs the demo against running services; see the module docstring.

    Args:
        settings: addresses, sizes and timings.
        spawn: starts child processes (from the calling thread).
        display: where progress goes.
    """

    def __init__(self, settings: DemoSettings, spawn: Spawn, display: Display) -> None:
        self._s = settings
        self._spawn = spawn
        self._display = display
        self._started = time.monotonic()
        self._phase = "setting up"
        self._kafka = KafkaSettings(
            bootstrap_servers=settings.bootstrap, overrides=_QUIET
        )
        self._output = settings.run_dir / "consumer.jsonl"
        self._deliveries = DeliveryLog(self._output)
        self._consumer = ConsumerChild(spawn, settings, self._output)
        self._presence: list[PresenceChild] = []
        self._follower: PresenceFollower | None = None
        self._lag: LagSampler | None = None
        self._homeserver: SimulatedHomeserver | None = None
        self._writer_thread: threading.Thread | None = None
        self._writer_stop = threading.Event()
        self._writer_started = 0.0
        self._producer: Producer | None = None
        self._tombstones: Producer | None = None
        self._conn: DbConnection | None = None
        self._report = DemoReport(engine=settings.engine, output=self._output)

    # -- helpers ---------------------------------------------------------------------

    def _say(self, message: str) -> None:
        self._display.event(f"[{time.monotonic() - self._started:6.1f} s] {message}")

    def _frame(self) -> Frame:
        self._deliveries.poll()
        hs = self._homeserver
        last: dict[tuple[str, str], int] = {}
        written: dict[str, int] = {}
        if hs is not None:
            _, last, written = hs.snapshot()
        lag_rows = self._lag.latest() if self._lag is not None else []
        msgs: dict[str, int] = {}
        for row in lag_rows:
            msgs[row.stream] = msgs.get(row.stream, 0) + row.lag_messages
        totals = []
        for stream in self._s.streams:
            writers = {w: t for (s, w), t in last.items() if s == stream}
            lag_tokens = 0
            for w, t in writers.items():
                seen = self._deliveries.tokens.get((stream, w), 0)
                if hs is not None:
                    seen = max(seen, hs.history.get((stream, w), 0))
                lag_tokens += max(0, t - seen)
            totals.append(
                StreamTotals(
                    stream,
                    len(writers),
                    written.get(stream, 0),
                    self._deliveries.rows[stream],
                    self._deliveries.backfill_rows[stream],
                    lag_tokens,
                    msgs.get(stream),
                )
            )
        return Frame(
            elapsed_s=time.monotonic() - self._started,
            phase=self._phase,
            streams=tuple(totals),
            consumer=self._consumer_state(),
            presence=tuple(self._presence_state(p) for p in self._presence),
        )

    def _consumer_state(self) -> str:
        c = self._consumer
        if c.process is None:
            return f"stopped (runs so far: {c.runs})"
        state = "running" if c.running() else f"EXITED {c.process.returncode}"
        return (
            f"run {c.runs}, pid {c.process.pid}, {state}; "
            f"metrics http://127.0.0.1:{c.port}/metrics"
        )

    def _presence_state(self, p: PresenceChild) -> str:
        users = ",".join(u.split(":")[0] for u in p.users)
        head = f"{p.name} [{users}]"
        if p.how is None:
            age = self._heartbeat_age(p)
            return f"{head} syncing" + (f" (heartbeat {age:.1f} s ago)" if age else "")
        if p.gone_after_s is not None:
            verb = "cleared" if p.how == "SIGTERM" else "expired"
            return f"{head} {p.how}: {verb} after {p.gone_after_s:.2f} s"
        if p.how == "SIGKILL":
            age = self._heartbeat_age(p)
            left = self._s.presence_expiry_s - (age or 0.0)
            return f"{head} SIGKILL: no clear; expires in {max(0.0, left):.1f} s"
        return f"{head} {p.how}: waiting for its clear"

    def _instances(self) -> dict[str, InstanceSummary]:
        if self._follower is None:
            return {}
        return {i.instance_id: i for i in self._follower.instances()}

    def _heartbeat_age(self, p: PresenceChild) -> float | None:
        summary = self._instances().get(p.instance_id or "")
        return None if summary is None else summary.heartbeat_age_ms / 1000

    def _tick(self) -> None:
        """Everything a wait does between checks: health of the parts, presence, view."""
        hs = self._homeserver
        if hs is not None and hs.failure is not None:
            raise AdapterError(f"the simulated homeserver failed: {hs.failure}")
        if self._follower is not None and self._follower.failure is not None:
            raise AdapterError(f"the presence writer failed: {self._follower.failure}")
        c = self._consumer
        if c.process is not None and not c.process.running():
            raise ServiceError(
                f"synkafka consume exited with {c.process.returncode}:\n"
                f"{_log_tail(c.log_path)}"
            )
        live = self._instances()
        now = time.monotonic()
        for p in self._presence:
            if p.instance_id is None:
                p.read_log()
            if (
                p.stopped_at is not None
                and p.gone_after_s is None
                and p.instance_id not in live
            ):
                p.gone_after_s = now - p.stopped_at
                self._say(
                    f"presence: {p.name} is gone from the presence writer's view "
                    f"{p.gone_after_s:.2f} s after {p.how}"
                    + (" (its clear)" if p.how == "SIGTERM" else " (expiry)")
                )
        self._display.update(self._frame())

    def _wait(
        self, what: str, done: Callable[[], bool], timeout_s: float = 60.0
    ) -> float:
        """Poll ``done`` (refreshing the view) until true; return the seconds it took.

        Raises:
            ServiceError: not done within ``timeout_s``.
        """
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            self._tick()
            if done():
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}"
                )
            time.sleep(0.05)

    def _writes_reached(self, share: float) -> Callable[[], bool]:
        target = int(self._s.rows * share)
        hs = self._homeserver

        def check() -> bool:
            return hs is None or hs.writes >= target or hs.finished.is_set()

        return check

    # -- steps -----------------------------------------------------------------------

    def _set_up(self) -> None:
        s = self._s
        s.run_dir.mkdir(parents=True, exist_ok=True)
        # A reused run folder: start with no JSON lines and no logs of an earlier run.
        for old in (self._output, *s.run_dir.glob("*.log")):
            old.unlink(missing_ok=True)
        self._conn = conn = connect(s.dsn, create=True)  # a fresh demo database
        if conn.engine == "sqlite":
            # Readers (the consumer's backfill) and the writer side by side.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        create_synapse_tables(conn)
        created = Admin(self._kafka).create_topics(
            topics.topic_specs(s.prefix, s.streams)
        )
        self._say(
            f"Database: {s.engine} ({s.dsn}); {len(created)} topics under "
            f"{s.prefix}.*; streams: {', '.join(s.streams)}."
        )
        self._producer = Producer(self._kafka, client_id="synkafka-demo-homeserver")
        publisher = Publisher(self._producer, s.prefix)
        self._homeserver = SimulatedHomeserver(
            conn, publisher, s.streams, s.server_name
        )
        self._homeserver.write_history()
        self._report.history_rows = self._homeserver.history_rows
        self._say(
            f"History: {self._homeserver.history_rows} rows written before the consumer "
            "first starts (a new consumer starts at the head: they are not delivered)."
        )

        # The presence writer's view, then the two syncing instances.
        expiry_ms = int(s.presence_expiry_s * 1000)
        self._tombstones = Producer(self._kafka, client_id="synkafka-demo-tombstones")
        self._follower = PresenceFollower(
            Consumer(
                self._kafka,
                f"{s.prefix}.demo-presence-writer",
                client_id="synkafka-demo-presence",
            ),
            s.prefix,
            producer=self._tombstones,
            expiry_ms=expiry_ms,
            expire_interval_s=0.2,
            clear_tombstone_delay_ms=500,
            replay_idle_s=1.0,
        )
        self._follower.start()
        for name, users in (
            ("sync1", ("@alice", "@bob")),
            ("sync2", ("@carol", "@dave")),
        ):
            full = tuple(f"{u}:{s.server_name}" for u in users)
            argv = [s.python, "-m", "adapter", "presence", "track"]
            for u in full:
                argv += ["--user", u]
            argv += [
                "--device",
                "PHONE",
                "--instance-name",
                name,
                "--heartbeat-interval",
                str(_HEARTBEAT_S),
                "--debounce",
                "0.05",
                "--stop-delay",
                "0",
                "--server-name",
                s.server_name,
                "--bootstrap-servers",
                s.bootstrap,
            ]
            log = s.run_dir / f"presence-{name}.log"
            self._presence.append(
                PresenceChild(
                    name, full, self._spawn(argv, log, f"presence-{name}"), log
                )
            )
        self._say(
            "Presence: started `synkafka presence track` as sync1 (alice, bob) and "
            f"sync2 (carol, dave); heartbeats every {_HEARTBEAT_S:g} s, expiry "
            f"{s.presence_expiry_s:g} s (Synapse: 5 minutes)."
        )

        self._lag = LagSampler(s)
        self._lag.start()
        self._consumer.start()
        self._say(
            "Consumer: started `synkafka consume --db ... --output "
            f"{self._output.name}` (pid {self._pid()})."
        )
        self._phase = "waiting for the consumer and the presence instances"
        took = self._wait(
            "the consumer to be ready and both presence instances to be seen",
            lambda: (
                self._consumer.ready()
                and all(p.instance_id in self._instances() for p in self._presence)
            ),
        )
        self._say(
            f"Consumer ready and both presence instances live after {took:.1f} s."
        )

    def _pid(self) -> int:
        return self._consumer.process.pid if self._consumer.process else 0

    def _start_writing(self) -> None:
        hs = self._homeserver
        assert hs is not None  # noqa: S101 - set in _set_up
        s = self._s
        self._writer_thread = threading.Thread(
            target=hs.run,
            args=(self._writer_stop, s.rows, s.duration_s),
            name="demo-homeserver",
            daemon=True,
        )
        self._writer_started = time.monotonic()
        self._writer_thread.start()
        self._phase = "live: the homeserver writes, the consumer follows"
        self._say(
            f"Homeserver: writing about {s.rows} tokens over {s.duration_s:g} s "
            f"(events by {' and '.join(EVENT_WRITERS)}, the rest by {MAIN_WRITER})."
        )

    def _gap(self) -> None:
        self._wait(
            "the first part of the rows", self._writes_reached(_STOP_CONSUMER_AT), 600
        )
        code = self._consumer.stop()
        self._say(
            f"Consumer: SIGTERM; it finished its handlers, committed and exited {code}. "
            "The homeserver keeps writing."
        )
        self._phase = "consumer stopped: the rows written now must come from backfill"
        sync1 = self._presence[0]
        sync1.stopped_at, sync1.how = time.monotonic(), "SIGTERM"
        sync1.exit_code = sync1.process.stop(10.0)
        sync1.read_log()
        self._say(
            f"Presence: SIGTERM to sync1; it published its clear and exited "
            f"{sync1.exit_code}."
        )
        self._wait("the kill point", self._writes_reached(_KILL_PRESENCE_AT), 600)
        sync2 = self._presence[1]
        sync2.stopped_at, sync2.how = time.monotonic(), "SIGKILL"
        sync2.exit_code = sync2.process.kill()
        self._say(
            "Presence: SIGKILL to sync2; it cannot clear, so the presence writer "
            f"must expire it after {self._s.presence_expiry_s:g} s without a heartbeat."
        )
        self._wait("the restart point", self._writes_reached(_RESTART_CONSUMER_AT), 600)

    def _catch_up(self) -> None:
        self._consumer.start()
        self._say(
            f"Consumer: started again (pid {self._pid()}): it resumes from its "
            "committed POSITION and backfills the gap from the database."
        )
        self._phase = "consumer restarted: backfilling the gap, then live"
        took = self._wait("the consumer to catch up", self._consumer.ready, 120)
        self._report.catch_up_s = took
        backfill = sum(self._deliveries.backfill_rows.values())
        self._say(
            f"Consumer: caught up {took:.1f} s after the restart ({backfill} rows from the database)."
        )
        hs = self._homeserver
        if hs is not None and self._s.resend:
            hs.request_resend(self._s.resend)
            self._say(
                f"Homeserver: re-sends its last {self._s.resend} events records, as a "
                "writer does after a reconnect; the consumer must drop them all."
            )
        self._phase = "live again"

    def _drain(self) -> None:
        hs = self._homeserver
        assert hs is not None  # noqa: S101 - set in _set_up
        self._wait("the homeserver to finish writing", hs.finished.is_set, 600)
        self._report.writing_s = time.monotonic() - self._writer_started
        if hs.failure is not None:
            raise AdapterError(f"the simulated homeserver failed: {hs.failure}")
        self._say(
            f"Homeserver: done, {hs.writes} tokens in {self._report.writing_s:.1f} s."
        )
        self._phase = "draining: waiting for every token to be delivered"

        def all_delivered() -> bool:
            _, last, _ = hs.snapshot()
            return all(
                self._deliveries.tokens.get(k, 0) >= t
                for k, t in last.items()
                if t > hs.history.get(k, 0)
            )

        self._wait("every token to be delivered", all_delivered, 60)
        self._phase = "draining: waiting for zero lag (synkafka lag)"
        if self._lag is not None:
            self._lag.pause()
        lag = self._lag

        def lag_zero() -> bool:
            if lag is None:
                return True
            rows = lag.measure()
            behind = [r for r in rows if r.lag_messages or r.lag_tokens != 0]
            if behind:
                logger.debug("still behind: %s", behind)
            return bool(rows) and not behind

        took = self._wait("zero lag", lag_zero, 30)
        self._say(
            f"Lag: zero in tokens and messages on every stream ({took:.1f} s after the last delivery)."
        )
        self._phase = "waiting for the presence expiry"
        self._wait(
            "both presence instances to leave the view",
            lambda: all(p.gone_after_s is not None for p in self._presence),
            self._s.presence_expiry_s + 30,
        )
        self._consumer.scrape_dropped()
        code = self._consumer.stop()
        self._say(f"Consumer: SIGTERM; exited {code}.")

    # -- the check ---------------------------------------------------------------------

    def _check(self) -> None:
        r = self._report
        hs = self._homeserver
        assert hs is not None  # noqa: S101 - set in _set_up
        self._deliveries.poll()
        # Final lag, as `synkafka lag` would print it, with the consumer stopped.
        lag_rows: list[LagRow] = []
        if self._lag is not None:
            lag_rows = self._lag.measure()
            self._lag.record(lag_rows)
            r.lag_messages = sum(x.lag_messages for x in lag_rows) if lag_rows else None
            tokens = [x.lag_tokens for x in lag_rows]
            r.lag_tokens = (
                sum(t for t in tokens if t is not None)
                if lag_rows and None not in tokens
                else None
            )
        # What the database holds after the history, read back with the backfill code.
        expected: dict[Key, tuple[str, ...]] = dict(hs.typing_log)
        # Every row as stored: without Synapse's state-all collapse of busy rooms.
        registry = builtin_registry(engine=self._conn.engine if self._conn else None)
        registry.register(
            "events", EventsSource(state_all_threshold=None), replace=True
        )
        reader = DatabaseReader(self._s.dsn, registry=registry)
        try:
            for stream in self._s.streams:
                if not reader.has_source(stream):
                    continue
                for writer, position in sorted(reader.positions(stream).items()):
                    start = hs.history.get((stream, writer), 0)
                    for token, typed in reader.read(stream, writer, start, position):
                        expected[(stream, writer, token)] = _canonical(
                            [row_to_wire(row) for row in typed]
                        )
        finally:
            reader.close()
        delivered = self._deliveries.delivered
        lost = unexpected = 0
        for key, rows in expected.items():
            got = delivered.get(key)
            if got is None:
                lost += len(rows)
            elif got != rows:
                lost += len(set(rows) - set(got))
                unexpected += len(set(got) - set(rows))
        for key, got in delivered.items():
            if key not in expected:
                unexpected += len(got)
        r.db_rows = sum(len(v) for k, v in expected.items() if k[0] != "typing")
        _, last, written = hs.snapshot()
        r.streams = [
            StreamTotals(
                stream,
                sum(1 for (s, _w) in last if s == stream),
                written.get(stream, 0),
                self._deliveries.rows[stream],
                self._deliveries.backfill_rows[stream],
                sum(x.lag_tokens or 0 for x in lag_rows if x.stream == stream),
                sum(x.lag_messages for x in lag_rows if x.stream == stream),
            )
            for stream in self._s.streams
        ]
        r.written = sum(written.values())
        r.delivered = sum(self._deliveries.rows.values())
        r.from_backfill = sum(self._deliveries.backfill_rows.values())
        r.resent = hs.resent
        r.dropped = self._consumer.dropped
        r.twice = len(self._deliveries.twice)
        r.lost = lost
        r.unexpected = unexpected
        r.consumer_exits = list(self._consumer.exit_codes)
        for p in self._presence:
            if p.how == "SIGTERM":
                outcome = (
                    f"{p.name}: SIGTERM, clear acknowledged, exit {p.exit_code}; gone "
                    f"from the view after {p.gone_after_s or 0:.2f} s"
                )
            else:
                outcome = (
                    f"{p.name}: SIGKILL (no clear); expired after "
                    f"{p.gone_after_s or 0:.2f} s (expiry {self._s.presence_expiry_s:g} s)"
                )
            r.presence.append(outcome)
        tombstones = self._follower.tombstones_written if self._follower else 0
        r.presence.append(f"tombstones written by the presence writer: {tombstones}")
        sync1, sync2 = self._presence
        typing_rows = written.get("typing", 0)
        r.checks = [
            ("lost rows is 0", lost == 0),
            ("no unexpected rows", unexpected == 0),
            ("nothing delivered twice", r.twice == 0),
            ("every written row delivered", r.delivered == r.written),
            (
                "the database holds every written row",
                r.db_rows == r.written - typing_rows,
            ),
            ("the gap came from backfill", r.from_backfill > 0),
            (
                "every re-sent row dropped as a duplicate",
                r.dropped >= r.resent,
            ),
            ("lag is 0 tokens", r.lag_tokens == 0),
            ("lag is 0 messages", r.lag_messages == 0),
            (
                "the consumer exited 0 on each SIGTERM",
                r.consumer_exits == [0, 0],
            ),
            (
                "sync1 cleared on SIGTERM",
                sync1.cleared
                and sync1.exit_code == 0
                and sync1.gone_after_s is not None
                and sync1.gone_after_s < 2.0,
            ),
            (
                "sync2 expired after SIGKILL",
                sync2.gone_after_s is not None
                and sync2.gone_after_s <= self._s.presence_expiry_s + 3.0,
            ),
            ("tombstones written for both", tombstones >= 2),
        ]

    # -- run and clean up ----------------------------------------------------------------

    def run(self) -> DemoReport:
        """Run every step, clean up, and return the report.

        Raises:
            AdapterError: a part failed or timed out (the children are stopped first).
            KeyboardInterrupt: Ctrl-C (the children are stopped first).
        """
        try:
            self._set_up()
            self._start_writing()
            self._gap()
            self._catch_up()
            self._drain()
            self._check()
            self._phase = "done: every process the scenario started is stopped"
            self._display.update(self._frame())
        finally:
            self._display.close()
            self._clean_up()
        self._report.elapsed_s = time.monotonic() - self._started
        return self._report

    def _clean_up(self) -> None:
        """Stop everything this scenario started; one failure does not stop the rest."""
        steps: list[tuple[str, Callable[[], object]]] = [
            ("writer", self._stop_writer),
            ("consumer", lambda: self._consumer.stop(15.0)),
            *((f"presence {p.name}", _stopper(p.process)) for p in self._presence),
            ("presence writer", self._close_follower),
            ("lag", self._close_lag),
            ("producer", self._close_producer),
            ("database", self._close_db),
        ]
        for name, step in steps:
            try:
                step()
            except Exception:  # each part is stopped even if another one fails
                logger.exception("stopping the demo's %s failed", name)

    def _close_follower(self) -> None:
        try:
            if self._follower is not None:
                self._follower.close(5.0)
        finally:
            if self._tombstones is not None:
                self._tombstones.close(5.0)

    def _close_lag(self) -> None:
        if self._lag is not None:
            self._lag.close()

    def _close_producer(self) -> None:
        if self._producer is not None:
            self._producer.close(5.0)

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _stop_writer(self) -> None:
        self._writer_stop.set()
        if self._writer_thread is not None:
            self._writer_thread.join(30.0)


def _stopper(process: ChildProcess) -> Callable[[], object]:
    def stop() -> object:
        return process.stop(10.0) if process.running() else None

    return stop
