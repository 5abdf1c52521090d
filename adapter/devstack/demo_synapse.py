"""``synkafka demo --with-synapse``: a real Synapse, ``synkafka bridge`` and ``consume``.

:mod:`adapter.devstack.demo_run` starts Kafka, Redis (and PostgreSQL), a real Synapse with
its worker, and hands :class:`SynapseDemo` the addresses, a spawner and a
:class:`Traffic` (the Matrix users, from :mod:`adapter.devstack.services.matrix_client`;
injected, so the scenario holds the steps and the runner picks the parts). Steps:

1. ``synkafka topics ensure``; ``synkafka bridge --db <Synapse's DB>``; the users
   and the room; bob's ``/sync`` long-polls on the worker; a presence writer's view.
2. ``synkafka consume --db <Synapse's DB> --output consumer.jsonl``; once ready,
   each writer's position in Synapse's tables is the start.
3. Messages (with typing, receipts, presence, account data, to-device, push rules);
   at 30% the consumer gets SIGTERM, the users keep going, at 60% it starts again
   and backfills the gap from Synapse's database.
4. Drain: every token in Synapse's tables delivered, zero lag (``synkafka lag``).
5. Check: every ``events`` row after the start is in the JSON lines exactly once;
   rows of the other tables (which keep the latest row per key) are delivered at
   their token; the worker's instance was on the presence topic.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from adapter.cli.demo_sizes import DEFAULT_MESSAGES, QUICK_MESSAGES
from adapter.core.config import KafkaSettings
from adapter.core.errors import ServiceError
from adapter.devstack.demo.checks import lag_totals, read_expected
from adapter.devstack.demo.children import (
    ChildProcess,
    ConsumerChild,
    Spawn,
    stop_each,
)
from adapter.devstack.demo.deliveries import DeliveryLog
from adapter.devstack.demo.lag_sampler import LagSampler
from adapter.devstack.demo.report import RunReport, lag_text, verdict
from adapter.devstack.demo.settings import DemoSettings
from adapter.devstack.demo.views import Display
from adapter.devstack.services._process import free_port, log_tail
from adapter.io.kafka.consumer import Consumer
from adapter.runtime.backfill import DatabaseReader
from adapter.runtime.lag import LagRow
from adapter.runtime.presence_follower import PresenceFollower

__all__ = [
    "DEFAULT_MESSAGES",
    "QUICK_MESSAGES",
    "SynapseDemo",
    "SynapseDemoReport",
    "SynapseDemoSettings",
    "Traffic",
]

WORKER_NAME: Final = "worker1"
_STOP_AT: Final = 0.30
_RESTART_AT: Final = 0.60


class Traffic(Protocol):
    """Matrix users driving Synapse (``MatrixTraffic`` fits)."""

    actions: dict[str, int]

    @property
    def syncs(self) -> int:
        """``/sync`` requests on the worker so far."""
        ...

    def set_up(self) -> None:
        """Register, make the room, start syncing on the worker."""
        ...

    def step(self, n: int) -> None:
        """One message plus one more action."""
        ...

    def close(self) -> None:
        """Stop syncing."""
        ...


@dataclass(frozen=True, slots=True)
class SynapseDemoSettings:
    """What the Synapse demo needs besides the plain demo's settings.

    Attributes:
        demo: bootstrap, Synapse's DSN, run folder, interpreter, server name.
        redis_url: Synapse's Redis.
        messages: messages to send (each with one more action).
    """

    demo: DemoSettings
    redis_url: str
    messages: int = DEFAULT_MESSAGES


@dataclass(slots=True)
class SynapseDemoReport(RunReport):
    """The outcome (the fields of :class:`RunReport` and more); :meth:`lines` is the summary."""

    messages: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    syncs: int = 0
    per_stream: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """stream -> (rows in Synapse's tables after the start, delivered, of which backfill)"""
    events_db: int = 0
    lost: int = 0
    twice: int = 0
    unexpected_events: int = 0
    from_backfill: int = 0
    presence: str = ""

    def lines(self) -> list[str]:
        """The summary, ready to print."""
        lag = lag_text(self.lag_tokens, self.lag_messages)
        acts = ", ".join(f"{k} {v}" for k, v in sorted(self.actions.items()))
        out = [
            (
                f"Summary (real Synapse on {self.engine}, main + {WORKER_NAME}; "
                "synkafka bridge -> Kafka -> synkafka consume)"
            ),
            f"  {'stream':<14}{'in Synapse DB':>15}{'delivered':>11}{'backfill':>10}",
            *(
                f"  {s:<14}{db:>15}{dl:>11}{bf:>10}"
                for s, (db, dl, bf) in sorted(self.per_stream.items())
            ),
            "",
            f"  Matrix requests       {acts}; /sync on {WORKER_NAME}: {self.syncs}",
            f"  events rows in DB     {self.events_db:>7}   (after the start token)",
            f"  rows from backfill    {self.from_backfill:>7}   read from Synapse's database after the restart",
            f"  delivered twice       {self.twice:>7}",
            f"  lost rows             {self.lost:>7}   (rows in Synapse's tables missing from the JSON lines)",
            f"  unexpected events     {self.unexpected_events:>7}",
            f"  lag                   {lag}",
            self.consumer_line(),
            f"  presence              {self.presence}",
            f"  JSON lines            {self.output}",
            f"  elapsed               {self.elapsed_s:.1f} s",
            "",
        ]
        out.append(verdict(self.checks))
        return out


class SynapseDemo:
    """Runs the steps in the module docstring against running services.

    Args:
        settings: addresses and sizes.
        spawn: starts child processes.
        display: where progress goes (only :meth:`Display.event` is used).
        traffic: the Matrix users.
    """

    def __init__(
        self,
        settings: SynapseDemoSettings,
        spawn: Spawn,
        display: Display,
        traffic: Traffic,
    ) -> None:
        self._s = settings
        self._d = settings.demo
        self._spawn = spawn
        self._display = display
        self._traffic = traffic
        self._started = time.monotonic()
        self._output = self._d.run_dir / "consumer.jsonl"
        self._deliveries = DeliveryLog(self._output)
        self._consumer = ConsumerChild(spawn, self._d, self._output)
        self._bridge: ChildProcess | None = None
        self._bridge_log = self._d.run_dir / "bridge.log"
        self._follower: PresenceFollower | None = None
        self._lag: LagSampler | None = None
        self._start: dict[tuple[str, str], int] = {}
        self._report = SynapseDemoReport(engine=self._d.engine, output=self._output)

    def _say(self, message: str) -> None:
        self._display.event(f"[{time.monotonic() - self._started:6.1f} s] {message}")

    def _check_children(self) -> None:
        self._consumer.check_alive()
        if self._bridge is not None and not self._bridge.running():
            raise ServiceError(
                f"synkafka bridge exited with {self._bridge.returncode}:\n"
                f"{log_tail(self._bridge_log, 15)}"
            )
        if self._follower is not None and self._follower.failure is not None:
            raise ServiceError(f"the presence view failed: {self._follower.failure}")

    def _wait(
        self,
        what: str,
        done: Callable[[], bool],
        timeout_s: float = 60.0,
        detail: Callable[[], str] | None = None,
    ) -> float:
        started = time.monotonic()
        while True:
            self._check_children()
            self._deliveries.poll()
            if done():
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                # Say what is still missing: a bare timeout gives the operator
                # (and a failed CI run) nothing to go on.
                extra = f": {detail()}" if detail is not None else ""
                raise ServiceError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}{extra}"
                )
            time.sleep(0.05)

    def _cli(self, *args: str) -> list[str]:
        return [self._d.python, "-m", "adapter", *args]

    def _positions(self) -> dict[tuple[str, str], int]:
        reader = DatabaseReader(self._d.dsn)
        try:
            return {
                (stream, writer): token
                for stream in self._d.streams
                if reader.has_source(stream)
                for writer, token in reader.positions(stream).items()
            }
        finally:
            reader.close()

    # -- steps -------------------------------------------------------------------------

    def _set_up(self) -> None:
        d = self._d
        d.run_dir.mkdir(parents=True, exist_ok=True)
        for old in (self._output, *d.run_dir.glob("*.log")):
            old.unlink(missing_ok=True)
        kafka_args = [
            "--bootstrap-servers",
            d.bootstrap,
            "--server-name",
            d.server_name,
        ]
        ensure = self._spawn(
            self._cli("topics", "ensure", *kafka_args),
            d.run_dir / "topics.log",
            "topics-ensure",
        )
        self._wait("synkafka topics ensure", lambda: not ensure.running(), 60)
        if ensure.returncode != 0:
            raise ServiceError(
                f"synkafka topics ensure exited {ensure.returncode}:\n"
                f"{log_tail(d.run_dir / 'topics.log', 15)}"
            )
        self._say(f"Topics: `synkafka topics ensure` created {d.prefix}.*.")
        bridge_port = free_port()
        self._bridge = self._spawn(
            self._cli(
                "bridge",
                "--redis",
                self._s.redis_url,
                "--db",
                d.dsn,
                "--metrics-port",
                str(bridge_port),
                "--log-level",
                "WARNING",
                *kafka_args,
            ),
            self._bridge_log,
            "bridge",
        )
        # Redis pub/sub keeps nothing for a late subscriber: a USER_SYNC sent before
        # the bridge subscribed would be lost, so no traffic before it is ready.
        ready_url = f"http://127.0.0.1:{bridge_port}/ready"
        took = self._wait(
            "the bridge to subscribe to Redis", lambda: _http_ok(ready_url), 60
        )
        self._say(
            f"Bridge: `synkafka bridge --redis ... --db ...` subscribed after "
            f"{took:.1f} s (pid {self._bridge.pid}, metrics :{bridge_port})."
        )
        self._traffic.set_up()
        self._say(
            f"Matrix: alice and bob registered, a room, bob syncing on {WORKER_NAME}."
        )
        kafka = KafkaSettings(
            bootstrap_servers=d.bootstrap, overrides={"log_level": "3"}
        )
        self._follower = PresenceFollower(
            Consumer(
                kafka, f"{d.prefix}.demo-presence", client_id="synkafka-demo-presence"
            ),
            d.prefix,
        )
        self._follower.start()
        self._lag = LagSampler(d)
        self._consumer.start()
        took = self._wait("the consumer to be ready", self._consumer.ready, 90)
        self._start = self._positions()
        self._say(
            f"Consumer: `synkafka consume --db ... --output {self._output.name}` ready "
            f"after {took:.1f} s; start tokens: events "
            f"{self._start.get(('events', 'master'), 0)}."
        )

    def _send(self, first: int, last: int) -> None:
        for n in range(first, last):
            self._traffic.step(n)
            if n % 10 == 0:
                self._check_children()
                self._deliveries.poll()

    def _run_traffic(self) -> None:
        total = self._s.messages
        stop_at, restart_at = int(total * _STOP_AT), int(total * _RESTART_AT)
        started = time.monotonic()
        self._send(0, stop_at)
        code = self._consumer.stop()
        self._say(
            f"Consumer: SIGTERM after {stop_at} messages; exited {code}. "
            "The users keep going."
        )
        self._send(stop_at, restart_at)
        self._consumer.start()
        self._say(
            f"Consumer: started again after {restart_at} messages; it backfills the "
            "gap from Synapse's database."
        )
        took = self._wait("the consumer to catch up", self._consumer.ready, 90)
        self._report.catch_up_s = took
        self._say(f"Consumer: caught up {took:.1f} s after the restart.")
        self._send(restart_at, total)
        self._say(
            f"Matrix: {total} messages (and as many other actions) in "
            f"{time.monotonic() - started:.1f} s."
        )

    def _drain(self) -> None:
        end = self._positions()

        def delivered() -> bool:
            return self._deliveries.has_all(end, self._start)

        self._wait("every token in Synapse's tables to be delivered", delivered, 60)
        lag = self._lag
        assert lag is not None  # noqa: S101 - set in _set_up

        last: list[LagRow] = []

        def lag_zero() -> bool:
            last[:] = lag.measure()
            lag.record(last)
            return bool(last) and not any(
                r.lag_messages or (r.lag_tokens or 0) for r in last
            )

        def behind() -> str:
            rows = [r for r in last if r.lag_messages or (r.lag_tokens or 0)]
            return (
                "; ".join(
                    f"{r.stream}[{r.partition}] committed {r.committed} head {r.head} "
                    f"tokens behind {r.lag_tokens}"
                    for r in rows
                )
                or "no lag rows"
            )

        took = self._wait("zero lag", lag_zero, 30, behind)
        self._say(f"Lag: zero on every stream ({took:.1f} s after the last delivery).")
        follower = self._follower
        assert follower is not None  # noqa: S101 - set in _set_up
        bob = f"@bob:{self._d.server_name}"

        def worker_instance() -> str | None:
            # USER_SYNC names no worker: the worker's instance is the one where bob,
            # who syncs only on the worker, is syncing.
            for snap in follower.state().values():
                if any(dev.user_id == bob for dev in snap.syncing):
                    return snap.instance_id
            return None

        self._wait(
            f"{WORKER_NAME}'s presence instance (bob syncing)",
            lambda: worker_instance() is not None,
            30,
        )
        self._report.presence = (
            f"{WORKER_NAME}'s instance {worker_instance()} on the presence topic, "
            f"{bob} syncing there"
        )
        self._consumer.stop()

    def _check(self) -> None:
        r = self._report
        self._deliveries.poll()
        r.lag_tokens, r.lag_messages = lag_totals(
            self._lag.measure() if self._lag else []
        )
        expected = read_expected(self._d.dsn, self._d.streams, self._start)
        delivered = self._deliveries.delivered
        for key, rows in expected.items():
            got = delivered.get(key, ())
            r.lost += len(set(rows) - set(got))
            if key[0] == "events" and key in delivered:
                r.unexpected_events += len(set(got) - set(rows))
        for key, got in delivered.items():
            if key[0] == "events" and key not in expected:
                r.unexpected_events += len(got)
        r.events_db = sum(len(v) for k, v in expected.items() if k[0] == "events")
        db_rows: dict[str, int] = {}
        for (stream, _w, _t), rows in expected.items():
            db_rows[stream] = db_rows.get(stream, 0) + len(rows)
        r.per_stream = {
            s: (
                db_rows.get(s, 0),
                self._deliveries.rows[s],
                self._deliveries.backfill_rows[s],
            )
            for s in self._d.streams
            if db_rows.get(s) or self._deliveries.rows[s]
        }
        r.twice = len(self._deliveries.twice)
        r.from_backfill = sum(self._deliveries.backfill_rows.values())
        r.consumer_exits = list(self._consumer.exit_codes)
        r.messages = self._traffic.actions.get("messages", 0)
        r.actions = dict(self._traffic.actions)
        r.syncs = self._traffic.syncs
        r.checks = [
            ("lost rows is 0", r.lost == 0),
            ("every events row delivered exactly once", r.twice == 0 and r.lost == 0),
            ("no unexpected events rows", r.unexpected_events == 0),
            ("every message is an events row", r.events_db >= r.messages),
            ("the gap came from backfill", r.from_backfill > 0),
            ("lag is 0 tokens", r.lag_tokens == 0),
            ("lag is 0 messages", r.lag_messages == 0),
            ("the consumer exited 0 on each SIGTERM", r.consumer_exits == [0, 0]),
            (f"{WORKER_NAME} on the presence topic", bool(r.presence)),
        ]

    # -- run and clean up -----------------------------------------------------------------

    def run(self) -> SynapseDemoReport:
        """Run every step, clean up, and return the report.

        Raises:
            AdapterError: a part failed or timed out (the children are stopped first).
            KeyboardInterrupt: Ctrl-C (the children are stopped first).
        """
        try:
            self._set_up()
            self._run_traffic()
            self._drain()
            self._check()
        finally:
            self._display.close()
            self._clean_up()
        self._report.elapsed_s = time.monotonic() - self._started
        return self._report

    def _clean_up(self) -> None:
        steps: Sequence[tuple[str, Callable[[], Any]]] = [
            ("traffic", self._traffic.close),
            ("consumer", lambda: self._consumer.stop(15.0)),
            ("bridge", self._stop_bridge),
            ("presence view", self._close_follower),
            ("lag", self._close_lag),
        ]
        stop_each(
            steps,
            lambda name, _exc: self._display.event(
                f"stopping the demo's {name} failed"
            ),
        )

    def _stop_bridge(self) -> None:
        if self._bridge is not None and self._bridge.running():
            self._bridge.stop(15.0)

    def _close_follower(self) -> None:
        if self._follower is not None:
            self._follower.close(5.0)

    def _close_lag(self) -> None:
        if self._lag is not None:
            self._lag.close()


def _http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 (False while the process is not listening yet)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False
