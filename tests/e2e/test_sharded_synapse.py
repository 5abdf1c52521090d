"""A sharded Synapse through ``synkafka bridge`` and two ``synkafka consume``, with faults.

The deployment is the one big homeservers run: ``main``, two event persisters
(``persister1``, ``persister2``), a ``/sync`` worker, PostgreSQL and Redis
(:class:`~adapter.devstack.services.synapse_sharded.ShardedSynapse`). ``synkafka bridge
--db`` and two consumers run as the real commands, in child processes: ``consume
--db --catch-up database -o consumer.jsonl`` (instance ``sharded``) and ``consume
--db --catch-up kafka -o audit.jsonl`` (instance ``audit``). Four users in twelve
rooms write messages, typing, receipts, read markers, account data, room tags,
to-device messages, presence and push rules, while syncing on the ``/sync``
worker; a fifth user, the *watcher*, only long-polls ``/sync`` there. During that
traffic:

1. the bridge is SIGKILLed, then started again;
2. Redis is restarted;
3. both consumers are SIGKILLed, then started again on the same output files;
4. ``persister1`` is SIGKILLed, then started again.

``synkafka feed --db`` runs beside them, SIGKILLed and restarted with the consumers;
at the end every row of Synapse's ``events`` table is on the feed topic exactly once
for a ``read_committed`` reader, with its JSON equal to ``event_json`` and its stream
ordering, each room on one partition in stream order, both persisters' events there.

Then, per stream: every row Synapse's tables hold between the consumers' start and
the end of the traffic is in both files, under the writer that wrote it; both
persisters wrote events, and each ``ev`` row names the persister the ``events``
table says persisted it; every message Synapse accepted is there; every (stream,
writer, token, row) the stream topics hold from the consumers' start to the end
of the traffic is in the ``--catch-up kafka`` file; no file holds a (stream,
writer, token, row) twice.

Presence (docs/presence.md, "A bridged Synapse"), with the bridge's USER_SYNC window
shortened to 60 s (a stand-in for Synapse's 5 minutes; the row window is the default)
and its Redis connection probe: a reader of the presence topic with a 30 s expiry
must list the watcher, under ``sync1``'s one instance ID, without a gap from its
first sync until ``sync1`` is SIGKILLed about two minutes later, through all the
faults above (the bridge restart, the Redis restart, the persister's death): for the
last minute of that only the watcher's presence rows keep it listed. Three traffic users stop
syncing one by one (``sync1`` sends one ``USER_SYNC ... end`` for each, which is
how the bridge ties the instance to ``sync1``'s Redis connection), and 5 s after the
last of those ``sync1`` is SIGKILLed. The reader must drop the watcher within
seconds, the bridge must have tombstoned the instance, and Synapse's own ``GET
/presence/{user}/status``, asked right after our drop, must still say ``online``:
ours came first. Synapse's writer keeps counting the dead worker's syncs for 5
minutes after its last ``USER_SYNC``; the test does not wait for that. Then
``sync1`` is started again, the watcher comes back under a new instance ID, three
users start and stop syncing one by one, and ``sync1`` is stopped with SIGTERM
(whose ``CLEAR_USER_SYNC`` Synapse loses): the same assertions.

The per-stream numbers of both consumers (database rows, Kafka updates, delivered,
missing, duplicated) and the presence times are printed and written to
``numbers.txt`` in the test's tmp folder, and are part of every failure message.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from adapter.core import topics
from adapter.core.rows import STREAM_NAMES
from adapter.devstack.services import RedisServer
from adapter.devstack.services._process import ManagedProcess, log_tail
from adapter.devstack.services.matrix_client import MatrixClient, RoomsTraffic, SyncLoop
from adapter.devstack.services.synapse_sharded import (
    EVENT_PERSISTERS,
    SYNC_WORKER,
    ShardedSynapse,
)
from tests.e2e.sharded_feed import FeedCheck, stored_events
from tests.e2e.sharded_presence import (
    ExitTap,
    PresenceWatch,
    WorkerExit,
    measure_exit,
    stop_one_by_one,
    synapse_presence,
    user_presence_rows,
)
from tests.e2e.sharded_streams import (
    Deliveries,
    Key,
    TrafficThread,
    database_rows,
    event_writers,
    kafka_updates,
    numbers,
    positions,
    read_range,
    rows_count,
    topic_heads,
)
from tests.e2e.synkafka_child import SynkafkaChild
from tests.integration.harness import wait_for

# Bounded traffic: the data part stays within about a minute and a half on two busy
# cores.
_STEPS = 480
# Steps after which each fault starts; the traffic keeps going during each one.
_KILL_BRIDGE_AT = 50
_RESTART_REDIS_AT = 140
_KILL_CONSUMERS_AT = 230
_KILL_PERSISTER_AT = 320
# Steps the traffic makes while the killed bridge or consumers stay down.
_DOWN_FOR = 15
_KILLED_PERSISTER = EVENT_PERSISTERS[0]
_DRAIN_TIMEOUT_S = 90.0

# Long-poll time of the watcher's /sync, a common client's.
_WATCHER_POLL_MS = 30_000
# Users who stop syncing one by one before each exit, and the time between two
# stops (more than sync1's 10 s loop, so each gets an `end` line of its own).
_LEAVERS = 3
_LEAVE_GAP_S = 12.0
# The exit comes this long after the last USER_SYNC the bridge saw.
_EXIT_AFTER_S = 5.0
# Our view must drop the watcher this soon after the signal (the bridge lists
# Redis's clients every 2 s; the windows would take minutes).
_DROP_WITHIN_S = 10.0
# The bridge's USER_SYNC window in this run (Synapse's is 300 s; see ShardedRun).
_SYNC_WINDOW_S = 60
# How long the test watches after a signal before it gives up.
_EXIT_DEADLINE_S = 60.0


class ShardedRun:
    """The state of one run: processes, files, what was expected, what was seen."""

    def __init__(
        self,
        hs: ShardedSynapse,
        redis_server: RedisServer,
        kafka_bootstrap: str,
        tmp_path: Path,
    ) -> None:
        self.started = time.monotonic()
        self.hs = hs
        self.redis_server = redis_server
        self.bootstrap = kafka_bootstrap
        self.tmp_path = tmp_path
        dsn = hs.database_dsn
        assert dsn is not None
        self.dsn = dsn
        self.prefix = topics.default_prefix(hs.server_name)
        self.stream_topics = [
            topics.stream_topic(self.prefix, stream) for stream in STREAM_NAMES
        ]
        self.kafka_args = [
            "--bootstrap-servers",
            kafka_bootstrap,
            "--server-name",
            hs.server_name,
        ]
        self.timeline: list[str] = []
        # The USER_SYNC window shortened from Synapse's 300 s (a stand-in the issue
        # allows): the watcher's long poll outlives it by about a minute before
        # sync1 dies, so only its presence rows keep it listed then. The row window
        # is the default, and the death signal (the probe) has to do the dropping.
        self.bridge = SynkafkaChild(
            "bridge",
            [
                "bridge", "--redis", redis_server.url, "--db", dsn,
                "--presence-sync-window", str(_SYNC_WINDOW_S), *self.kafka_args,
            ],
            tmp_path / "bridge.log",
        )  # fmt: skip
        self.consumers = (
            self._consume("sharded", "database", "consumer.jsonl"),
            self._consume("audit", "kafka", "audit.jsonl"),
        )
        self.feed = SynkafkaChild(
            "feed",
            ["feed", "--db", dsn, "--partitions", "4", *self.kafka_args],
            tmp_path / "feed.log",
        )
        self.feed_check = FeedCheck(kafka_bootstrap, self.prefix)
        self.stored: dict[str, tuple[str, str, int]] = {}
        self.deliveries = Deliveries(tmp_path / "consumer.jsonl")
        self.audited = Deliveries(tmp_path / "audit.jsonl")
        self.traffic = RoomsTraffic(
            hs.client_url, hs.worker_client_url, hs.registration_shared_secret
        )
        self.watch: PresenceWatch | None = None
        self.watcher_sync: SyncLoop | None = None
        self.taps: list[ExitTap] = []
        self.extra_loops: list[SyncLoop] = []
        self.expected: dict[Key, set[str]] = {}
        self.on_kafka: dict[Key, set[str]] = {}
        self.presence: list[str] = []
        self.exits: list[WorkerExit] = []
        self.redis_reconnects = 0.0
        self.syncs = 0
        self.before_kill = 0
        self.instance_id = ""
        self.listed_before_kill: set[str] = set()
        self.unlisted_before_kill: list[float] = []
        # Any stop of the watcher is a gap until sync1 is meant to go.
        self.gaps_fail = True

    def _consume(self, name: str, catch_up: str, output: str) -> SynkafkaChild:
        return SynkafkaChild(
            name,
            [
                "consume",
                "--db",
                self.dsn,
                "--catch-up",
                catch_up,
                "--output",
                str(self.tmp_path / output),
                "--instance-name",
                name,
                "--no-progress",
                *self.kafka_args,
            ],
            self.tmp_path / f"{name}.log",
        )

    # -- reporting ---------------------------------------------------------------

    def note(self, what: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {what}"
        self.timeline.append(line)
        print(line)  # pytest shows it with a failure

    def report(self) -> str:
        table = numbers(
            self.expected,
            self.on_kafka,
            [
                ("--catch-up database (consumer.jsonl)", self.deliveries),
                ("--catch-up kafka (audit.jsonl)", self.audited),
            ],
        )
        exits = [line for done in self.exits for line in done.lines()]
        return "\n".join([*self.timeline, table, *exits, *self.presence])

    def wait_steadily(
        self,
        until: Callable[[], bool],
        deadline_s: float,
        what: str,
        *,
        required: bool = True,
    ) -> bool:
        """Poll ``until`` every half second; fail on a dead bridge or a presence gap.

        Returns whether ``until`` came true; past the deadline it fails, unless not
        ``required`` (the caller's assertions then say what is missing).
        """
        deadline = time.monotonic() + deadline_s
        while not until():
            if time.monotonic() > deadline:
                assert not required, (
                    f"{what}: not within {deadline_s:.0f} s\n{self.report()}"
                )
                return False
            self.bridge.alive()
            if self.watch is not None:
                self.watch.check()
            if self.watch is not None and self.gaps_fail:
                gaps = self.watch.stops_after(0)
                assert not gaps, (
                    f"{self.watch.user_id} left the reader's view at "
                    f"{[round(g - self.started, 1) for g in gaps]}\n{self.report()}"
                )
            time.sleep(0.5)
        return True

    # -- phases --------------------------------------------------------------------

    def start_children(self) -> None:
        ensure = ManagedProcess(
            [sys.executable, "-m", "adapter", "topics", "ensure", *self.kafka_args],
            log_path=self.tmp_path / "topics.log",
            name="synkafka topics ensure",
        )
        wait_for(lambda: ensure.returncode is not None, 60, "synkafka topics ensure")
        assert ensure.returncode == 0, log_tail(self.tmp_path / "topics.log")
        self.bridge.start()
        self.bridge.wait_ready()
        for child in (*self.consumers, self.feed):
            child.start()
        for child in (*self.consumers, self.feed):
            child.wait_ready()
        self.note("bridge, both consumers and the feed ready")

    def start_watcher(self) -> MatrixClient:
        """The watcher: one user who only long-polls /sync on sync1, without a break."""
        hs = self.hs
        watcher = MatrixClient(hs.client_url).register_with_shared_secret(
            "watcher", "pass-watcher", hs.registration_shared_secret
        )
        assert watcher.user_id is not None
        watch = self.watch = PresenceWatch(
            self.bootstrap, self.prefix, watcher.user_id, self.bridge
        )
        watch.start()
        on_worker = watcher.on(hs.worker_client_url)
        self.watcher_sync = SyncLoop(
            on_worker, timeout_ms=_WATCHER_POLL_MS, keep_going=True
        )
        self.watcher_sync.next_batch = on_worker.sync(timeout_ms=0)["next_batch"]
        self.watcher_sync.start()
        wait_for(lambda: bool(watch.listing()), 30, "the watcher in the presence view")
        (self.instance_id,) = watch.listing()
        self.note(f"{watcher.user_id} listed under sync1's instance {self.instance_id}")
        return watcher

    def traffic_with_faults(
        self,
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, str], int]]:
        """Run the traffic through the four faults; return where the files start."""
        hs, bridge = self.hs, self.bridge
        # The consumers' first start is where every row and update must begin to
        # reach the files. Kafka's heads are read before the database positions, so
        # a database row past the positions reaches Kafka past the heads too.
        start_heads = topic_heads(self.bootstrap, self.stream_topics)
        start = positions(self.dsn)
        self.traffic.set_up()
        self.note(
            f"{len(self.traffic.users)} users in {len(self.traffic.room_ids)} rooms, "
            "syncing"
        )
        run = TrafficThread(self.traffic, _STEPS)
        run.start()

        run.wait(_KILL_BRIDGE_AT)
        bridge.kill()
        self.note("bridge SIGKILLed")
        run.wait(_KILL_BRIDGE_AT + _DOWN_FOR)
        bridge.start()
        self.note(f"bridge started again, ready after {bridge.wait_ready():.1f} s")

        run.wait(_RESTART_REDIS_AT)
        subscribers = hs.subscriber_count()
        self.redis_server.restart()
        self.note("redis restarted")
        self.wait_steadily(
            lambda: hs.subscriber_count() >= subscribers,
            60,
            f"{subscribers} subscribers (Synapse's processes and the bridge) back",
        )
        self.note("every Synapse process and the bridge subscribed again")

        run.wait(_KILL_CONSUMERS_AT)
        for child in (*self.consumers, self.feed):
            child.kill()
        self.note("both consumers and the feed SIGKILLed")
        run.wait(_KILL_CONSUMERS_AT + _DOWN_FOR)
        for child in (*self.consumers, self.feed):
            child.start()
        ready = [child.wait_ready() for child in (*self.consumers, self.feed)]
        self.note(
            f"both consumers and the feed started again, ready after {max(ready):.1f} s"
        )

        run.wait(_KILL_PERSISTER_AT)
        self.before_kill = positions(self.dsn)[("events", _KILLED_PERSISTER)]
        hs.kill_worker(_KILLED_PERSISTER)
        self.note(f"{_KILLED_PERSISTER} SIGKILLed at events token {self.before_kill}")
        # No waiting for traffic here: main holds a request for a room of the dead
        # persister and retries until it is back, so the traffic stalls meanwhile.
        hs.start_worker(_KILLED_PERSISTER)
        self.note(
            f"{_KILLED_PERSISTER} started again, ready after "
            f"{hs.worker_ready_times[_KILLED_PERSISTER]:.1f} s"
        )
        run.join()
        self.note(
            f"traffic done: {self.traffic.actions}; failed requests "
            f"{self.traffic.failures}; {self.traffic.syncs} syncs "
            f"({self.traffic.sync_errors} failed)"
        )
        self.syncs = self.traffic.syncs
        return start_heads, start

    def drain(
        self, start_heads: dict[tuple[str, int], int], start: dict[tuple[str, str], int]
    ) -> None:
        """Wait until both files hold every row and update; then stop the consumers."""
        self.expected = database_rows(self.dsn, start, positions(self.dsn))
        self.on_kafka = kafka_updates(
            read_range(
                self.bootstrap,
                start_heads,
                topic_heads(self.bootstrap, self.stream_topics),
            )
        )

        def drained() -> bool:
            for child in self.consumers:
                child.alive()
            self.deliveries.poll()
            self.audited.poll()
            return not (
                self.deliveries.missing(self.expected)
                or self.audited.missing(self.expected)
                or self.audited.missing(self.on_kafka)
            )

        # On timeout the assertions say what is missing, with the numbers.
        if self.wait_steadily(drained, _DRAIN_TIMEOUT_S, "drained", required=False):
            self.note("drained")
        else:
            self.note(f"not drained after {_DRAIN_TIMEOUT_S:.0f} s")
        # The bridge's counters start at its restart, which came before Redis's.
        bridge = self.bridge
        self.redis_reconnects = bridge.metric(
            "synkafka_reconnects_total", component="redis"
        )
        self.note(
            f"bridge since its restart: {self.redis_reconnects:.0f} Redis reconnects, "
            "gaps repaired "
            f"{bridge.metric('synkafka_bridge_gaps_total', outcome='repaired'):.0f} "
            f"({bridge.metric('synkafka_bridge_gap_rows_total'):.0f} rows), "
            "unrepaired: "
            f"{bridge.samples('synkafka_bridge_gaps_total', outcome='unrepaired')}"
        )
        for child in self.consumers:
            child.stop()
        self.deliveries.poll()
        self.audited.poll()
        # Every row of the events table, as the feed should hold it.
        self.stored = stored_events(self.dsn)
        self.feed.alive()
        self.feed_check.read_until(set(self.stored), _DRAIN_TIMEOUT_S)
        self.feed.stop()
        self.note(self.feed_check.summary(self.stored))

    def users_leave(self, loops: tuple[SyncLoop, ...], what: str) -> None:
        """Stop ``loops`` one by one and wait until sync1 said so for each, plus 5 s."""
        watch = self.watch
        assert watch is not None
        before = watch.user_sync_lines
        stop_one_by_one(loops, _LEAVE_GAP_S)
        self.wait_steadily(
            lambda: watch.user_sync_lines >= before + len(loops),
            len(loops) * _LEAVE_GAP_S + 60,
            f"{len(loops)} USER_SYNC end lines ({what})",
        )
        self.wait_steadily(
            lambda: time.time() >= (watch.user_sync_at or 0) + _EXIT_AFTER_S,
            30,
            f"{_EXIT_AFTER_S:.0f} s after the last USER_SYNC",
        )
        self.note(f"{len(loops)} users stopped syncing one by one ({what})")

    def exit_of_sync1(
        self, how: str, watcher: MatrixClient, signal_worker: Callable[[], object]
    ) -> WorkerExit:
        """Signal sync1 and time our drop of the watcher against Synapse's answer."""
        watch = self.watch
        assert watch is not None
        assert watcher.user_id is not None
        (instance_id,) = watch.listing()
        presence_topic = topics.presence_topic(self.prefix)
        presence_stream = topics.stream_topic(self.prefix, "presence")
        tap = ExitTap(
            self.bootstrap,
            topic_heads(self.bootstrap, [presence_stream, presence_topic]),
            presence_stream,
            presence_topic,
            watcher.user_id,
            instance_id,
        )
        self.taps.append(tap)
        on_main = watcher.on(self.hs.client_url)
        user_id = watcher.user_id
        status = synapse_presence(on_main, user_id)
        assert status == "online", f"before the {how}: {status}\n{self.report()}"
        done = measure_exit(
            how,
            signal_worker,
            watch,
            tap,
            lambda: synapse_presence(on_main, user_id),
            deadline_s=_EXIT_DEADLINE_S,
            check=self.bridge.alive,
        )
        self.exits.append(done)
        self.note(
            f"{SYNC_WORKER} {how}: our view dropped the watcher at {done.ours if done.ours is None else round(done.ours, 1)}"
        )
        return done

    def sigterm_after_restart(self, watcher: MatrixClient) -> None:
        """Start sync1 again, let users come and leave, then SIGTERM it."""
        hs, watch = self.hs, self.watch
        assert watch is not None
        killed = self.instance_id
        hs.start_worker(SYNC_WORKER)
        self.note(f"{SYNC_WORKER} started again")
        # The watcher's loop retries on its own and lands on the new process.
        wait_for(
            lambda: bool(watch.listing() - {killed}),
            60,
            "the watcher under sync1's new instance ID",
        )
        self.note(f"the watcher listed again under {sorted(watch.listing())}")
        before = watch.user_sync_lines
        for user in self.traffic.users[:_LEAVERS]:
            on_worker = user.on(hs.worker_client_url)
            loop = SyncLoop(on_worker, timeout_ms=1000, keep_going=True)
            loop.next_batch = on_worker.sync(timeout_ms=0)["next_batch"]
            self.extra_loops.append(loop.start())
        wait_for(
            lambda: all(loop.syncs > 0 for loop in self.extra_loops),
            30,
            "the users syncing on the new sync1",
        )
        # Their `start` lines counted first, so only `end` lines count below.
        self.wait_steadily(
            lambda: watch.user_sync_lines >= before + _LEAVERS,
            30,
            f"{_LEAVERS} USER_SYNC start lines",
        )
        self.users_leave(tuple(self.extra_loops), "on the new sync1")
        self.exit_of_sync1("SIGTERM", watcher, lambda: hs.stop_worker(SYNC_WORKER))

    def presence_exits(self, watcher: MatrixClient) -> None:
        """The SIGKILL of sync1, then, after a restart, its SIGTERM."""
        watch = self.watch
        assert watch is not None
        self.users_leave(self.traffic.sync_loops[:_LEAVERS], "after the traffic")
        kill_wall = time.time()
        self.listed_before_kill = set(watch.instance_ids)
        self.unlisted_before_kill = list(watch.unlisted_samples)
        self.gaps_fail = False
        self.exit_of_sync1("SIGKILL", watcher, lambda: self.hs.kill_worker(SYNC_WORKER))
        # The last traffic user's loop would come back with sync1; stop it now.
        self.traffic.close()
        self.sigterm_after_restart(watcher)
        rows = user_presence_rows(self.bootstrap, self.prefix, watcher.user_id or "")
        self.presence.append(
            f"presence rows of {watcher.user_id} (Kafka time relative to the SIGKILL, "
            "state, age of last_user_sync_ts):"
        )
        self.presence.extend(
            f"  {at - kill_wall:+7.1f} s {state:<12}{at - last_sync / 1000:5.1f} s"
            for at, state, last_sync in rows
        )

    def close(self) -> None:
        self.traffic.close()
        loops = [*self.extra_loops, *([self.watcher_sync] if self.watcher_sync else [])]
        for loop in loops:
            with contextlib.suppress(Exception):
                loop.stop()  # their errors are those of the stopped worker
        for child in (*self.consumers, self.feed):
            child.stop()
        self.bridge.stop()
        for tap in self.taps:
            tap.close()
        if self.watch is not None:
            self.watch.close()
        self.deliveries.poll()
        self.audited.poll()

    # -- assertions ------------------------------------------------------------------

    def assert_streams(self, text: str) -> None:
        for name, files in (
            ("consumer.jsonl", self.deliveries),
            ("audit.jsonl", self.audited),
        ):
            assert not files.bad_lines, (
                f"{name}: unreadable lines {files.bad_lines}\n{text}"
            )
            duplicated = {k: n for k, n in files.copies.items() if n > 1}
            assert not duplicated, (
                f"{name}: {len(duplicated)} (stream, writer, token, row) more than "
                f"once, e.g. {list(duplicated)[:3]}\n{text}"
            )
        assert self.deliveries.missing(self.expected) == {}, (
            f"rows lost (database)\n{text}"
        )
        assert self.audited.missing(self.expected) == {}, f"rows lost (kafka)\n{text}"
        # --catch-up kafka: every update the stream topics hold, through both kills.
        assert self.audited.missing(self.on_kafka) == {}, (
            f"Kafka updates not delivered\n{text}"
        )
        on_kafka = sum(rows_count(self.on_kafka).values())
        assert on_kafka > sum(rows_count(self.expected).values()), (
            f"Kafka holds no more than the database: the comparison proves nothing\n{text}"
        )
        # The faults happened: the bridge saw Redis go away, users synced on sync1.
        assert self.redis_reconnects >= 1, text
        assert self.syncs > 0, text
        for child in self.consumers:
            assert child.exit_codes[-1] == 0, log_tail(child.log_path)
        assert self.bridge.exit_codes[-1] == 0, log_tail(self.bridge.log_path)

    def assert_events(self, text: str) -> None:
        """Both persisters wrote events, and the file names the one that did."""
        ev_writers: dict[str, set[str]] = {}
        for stream, writer, _token, row in self.deliveries.copies:
            wire = json.loads(row)
            if stream == "events" and wire[0] == "ev":
                ev_writers.setdefault(wire[1][0], set()).add(writer)
        per_writer = Counter(w for writers in ev_writers.values() for w in writers)
        assert set(per_writer) == set(EVENT_PERSISTERS), f"{per_writer}\n{text}"
        assert min(per_writer.values()) >= 10, f"{per_writer}\n{text}"
        in_table = event_writers(self.dsn, set(ev_writers))
        wrong = {
            event_id: (sorted(writers), in_table.get(event_id))
            for event_id, writers in ev_writers.items()
            if writers != {in_table.get(event_id)}
        }
        assert not wrong, f"events under the wrong writer: {list(wrong.items())[:5]}"
        # Every message Synapse acknowledged reached the file.
        unseen = set(self.traffic.event_ids) - set(ev_writers)
        assert not unseen, f"{len(unseen)} acknowledged messages missing\n{text}"
        # The killed persister came back and went on writing after its old position.
        after_kill = [
            token
            for (stream, writer, token, _row) in self.deliveries.copies
            if stream == "events"
            and writer == _KILLED_PERSISTER
            and token > self.before_kill
        ]
        assert after_kill, (
            f"{_KILLED_PERSISTER} wrote nothing after its restart\n{text}"
        )

    def assert_feed(self, text: str) -> None:
        """Every row of the events table on the feed once, as stored, in room order."""
        check = self.feed_check
        counts = Counter(event.event_id for event in check.events)
        assert check.undecodable == 0, text
        assert set(counts) == set(self.stored), f"feed and events table differ\n{text}"
        assert max(counts.values()) == 1, f"events on the feed twice\n{text}"
        for event in check.events:
            room, stored_json, ordering = self.stored[event.event_id]
            assert (event.room_id, event.json, event.stream_ordering) == (
                room,
                stored_json,
                ordering,
            ), f"{event.event_id} differs from the table\n{text}"
        assert all(len(p) == 1 for p in check.partitions_of.values()), text
        assert check.out_of_order_rooms() == [], text
        assert {e.instance_name for e in check.events} >= set(EVENT_PERSISTERS), text
        assert self.feed.exit_codes[-1] == 0, log_tail(self.feed.log_path)

    def assert_presence(self, text: str) -> None:
        # One instance for sync1 until the SIGKILL, listed at every sample.
        assert self.listed_before_kill == {self.instance_id}, text
        assert not self.unlisted_before_kill, (
            f"unlisted at {self.unlisted_before_kill[:5]}\n{text}"
        )
        assert [done.how for done in self.exits] == ["SIGKILL", "SIGTERM"], text
        for done in self.exits:
            assert done.ours is not None, f"{done.how}: the watcher stayed\n{text}"
            assert done.ours <= _DROP_WITHIN_S, f"{done.how}: late\n{text}"
            # Synapse still counted the user when we had dropped it: ours came first.
            assert done.synapse_then == "online", f"{done.how}: Synapse first\n{text}"
            assert done.tombstone is not None, f"{done.how}: no tombstone\n{text}"


# The presence part waits for users to leave one by one (twice) and for the bridge's
# probe; about four minutes in all.
@pytest.mark.timeout(600)
def test_sharded_synapse_through_faults(
    synapse_sharded: ShardedSynapse,
    redis_server: RedisServer,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    hs = synapse_sharded
    scene = ShardedRun(hs, redis_server, kafka_bootstrap, tmp_path)
    scene.note(
        f"synapse ready (main {hs.ready_s:.1f} s, workers "
        f"{max(hs.worker_ready_times.values()):.1f} s)"
    )
    try:
        scene.start_children()
        watcher = scene.start_watcher()
        start_heads, start = scene.traffic_with_faults()
        scene.drain(start_heads, start)
        scene.presence_exits(watcher)
        scene.bridge.stop()
    finally:
        scene.close()
    text = scene.report()
    (tmp_path / "numbers.txt").write_text(text + "\n")
    print(f"\n{text}\ntotal {time.monotonic() - scene.started:.1f} s")
    scene.assert_streams(text)
    scene.assert_events(text)
    scene.assert_feed(text)
    scene.assert_presence(text)
