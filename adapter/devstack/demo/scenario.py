"""The demo's main job, step by step: :class:`DemoScenario` (see the package docstring)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.errors import AdapterError, ServiceError
from adapter.core.presence import InstanceSummary
from adapter.devstack.demo.checks import (
    count_differences,
    demo_checks,
    lag_totals,
    presence_outcome,
    read_expected,
)
from adapter.devstack.demo.children import (
    ConsumerChild,
    PresenceChild,
    Spawn,
    stop_each,
    stopper,
)
from adapter.devstack.demo.deliveries import DeliveryLog
from adapter.devstack.demo.feed import (
    FeedChild,
    FeedTally,
    feed_caught_up,
    read_feed,
    stored_events,
)
from adapter.devstack.demo.homeserver import SimulatedHomeserver
from adapter.devstack.demo.lag_sampler import LagSampler
from adapter.devstack.demo.report import DemoReport
from adapter.devstack.demo.settings import (
    EVENT_WRITERS,
    MAIN_WRITER,
    QUIET,
    DemoSettings,
)
from adapter.devstack.demo.views import Display, Frame, StreamTotals
from adapter.io.db.connection import DbConnection, connect
from adapter.io.db.sources import EventsSource, builtin_registry
from adapter.io.db.synapse_schema import create_synapse_tables
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import Consumer
from adapter.io.kafka.producer import Producer
from adapter.runtime.lag import LagRow
from adapter.runtime.presence_follower import PresenceFollower
from adapter.runtime.publisher import Publisher

__all__ = ["DemoScenario"]

logger = logging.getLogger(__name__)

# Where in the run (share of the rows written) each step happens.
_STOP_CONSUMER_AT: Final = 0.30
_KILL_PRESENCE_AT: Final = 0.45
_RESTART_CONSUMER_AT: Final = 0.60
_HEARTBEAT_S: Final = 1.0


class DemoScenario:
    """Runs the demo against running services; see :mod:`adapter.devstack.demo`.

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
            bootstrap_servers=settings.bootstrap, overrides=QUIET
        )
        self._output = settings.run_dir / "consumer.jsonl"
        self._deliveries = DeliveryLog(self._output)
        self._consumer = ConsumerChild(spawn, settings, self._output)
        self._feed = FeedChild(spawn, settings)
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
        self._consumer.check_alive()
        self._feed.check_alive()
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
        self._set_up_homeserver()
        self._start_presence()
        self._start_consumer()

    def _set_up_homeserver(self) -> None:
        """A fresh database and topics, the homeserver, and the history it writes."""
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
        # The feed follows the events topic from its start, history included.
        self._feed.start()
        self._say(
            f"Feed: started `synkafka feed` (every event with its content on "
            f"{topics.feed_topic(s.prefix)}, in Kafka transactions)."
        )
        self._homeserver.write_history()
        self._report.history_rows = self._homeserver.history_rows
        self._say(
            f"History: {self._homeserver.history_rows} rows written before the consumer "
            "first starts (a new consumer starts at the head: they are not delivered)."
        )

    def _start_presence(self) -> None:
        """The presence writer's view, then the two syncing instances."""
        s = self._s
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
        for name, localparts in (
            ("sync1", ("@alice", "@bob")),
            ("sync2", ("@carol", "@dave")),
        ):
            self._presence.append(
                PresenceChild.start(self._spawn, s, name, localparts, _HEARTBEAT_S)
            )
        self._say(
            "Presence: started `synkafka presence track` as sync1 (alice, bob) and "
            f"sync2 (carol, dave); heartbeats every {_HEARTBEAT_S:g} s, expiry "
            f"{s.presence_expiry_s:g} s (Synapse: 5 minutes)."
        )

    def _start_consumer(self) -> None:
        """The lag sampler and the consumer; wait until it and the presence are live."""
        self._lag = LagSampler(self._s)
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
            return self._deliveries.has_all(hs.snapshot()[1], hs.history)

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
        self._phase = "draining: waiting for the feed to commit every events record"
        took = self._wait(
            "the feed to commit every events record",
            lambda: feed_caught_up(self._kafka, self._s.prefix),
            60,
        )
        code = self._feed.stop()
        self._say(
            f"Feed: caught up ({took:.1f} s after the consumer); SIGTERM, exited {code}."
        )

    # -- the check ---------------------------------------------------------------------

    def _check(self) -> None:
        r = self._report
        hs = self._homeserver
        assert hs is not None  # noqa: S101 - set in _set_up
        self._deliveries.poll()
        lag_rows = self._final_lag()
        # What the database holds after the history, read back with the backfill code,
        # every row as stored: without Synapse's state-all collapse of busy rooms.
        registry = builtin_registry(engine=self._conn.engine if self._conn else None)
        registry.register(
            "events", EventsSource(state_all_threshold=None), replace=True
        )
        expected = dict(hs.typing_log)
        expected.update(
            read_expected(self._s.dsn, self._s.streams, hs.history, registry)
        )
        r.lost, r.unexpected = count_differences(expected, self._deliveries.delivered)
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
        r.consumer_exits = list(self._consumer.exit_codes)
        expiry = self._s.presence_expiry_s
        r.presence.extend(presence_outcome(p, expiry) for p in self._presence)
        r.feed_exit = self._feed.exit_code
        if self._conn is not None:
            stored = stored_events(self._conn)
            r.feed = FeedTally.of(
                topics.feed_topic(self._s.prefix),
                read_feed(self._kafka, self._s.prefix, len(stored)),
                stored,
            )
        tombstones = self._follower.tombstones_written if self._follower else 0
        r.presence.append(f"tombstones written by the presence writer: {tombstones}")
        sync1, sync2 = self._presence
        r.checks = demo_checks(
            r,
            sync1,
            sync2,
            typing_rows=written.get("typing", 0),
            expiry_s=expiry,
            tombstones=tombstones,
            resend_asked=self._s.resend,
        )

    def _final_lag(self) -> list[LagRow]:
        """Measure the lag once more, as ``synkafka lag`` would print it, into the report."""
        if self._lag is None:
            return []
        rows = self._lag.measure()
        self._lag.record(rows)
        self._report.lag_tokens, self._report.lag_messages = lag_totals(rows)
        return rows

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
            ("feed", lambda: self._feed.stop(15.0)),
            *((f"presence {p.name}", stopper(p.process)) for p in self._presence),
            ("presence writer", self._close_follower),
            ("lag", self._close_lag),
            ("producer", self._close_producer),
            ("database", self._close_db),
        ]
        stop_each(
            steps,
            lambda name, exc: logger.error(
                "stopping the demo's %s failed", name, exc_info=exc
            ),
        )

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
