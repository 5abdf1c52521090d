"""The presence side of tests/e2e/test_sharded_synapse.py.

A reader of the presence topic that timestamps every change of one user, a tap on
the bridge's tombstones and the ``presence`` stream topic, what Synapse's own
presence writer answers, and :func:`measure_exit`: stop a worker (SIGKILL or
SIGTERM) and time when the reader drops the user against what Synapse says.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.commands import RdataCommand
from adapter.core.config import KafkaSettings
from adapter.core.errors import DecodeError
from adapter.core.presence import PresenceChange
from adapter.core.rows import PresenceRow
from adapter.devstack.services.matrix_client import MatrixClient, MatrixError, SyncLoop
from adapter.io.kafka.consumer import Consumer, PartitionStart
from adapter.runtime.presence_follower import PresenceFollower
from tests.e2e.sharded_streams import read_range, topic_heads
from tests.e2e.synkafka_child import SynkafkaChild

__all__ = [
    "READER_EXPIRY_MS",
    "ExitTap",
    "PresenceWatch",
    "WorkerExit",
    "measure_exit",
    "stop_one_by_one",
    "synapse_presence",
    "user_presence_rows",
]

#: The expiry of the test's reader of the presence topic (the bridge republishes
#: every 10 s, so a live instance is never older than that).
READER_EXPIRY_MS = 30_000


class PresenceWatch:
    """What a reader of the presence topic sees of one user, as it happens.

    A read-only :class:`PresenceFollower` (it writes no tombstones: in a bridged
    deployment only the bridge writes the topic) with a 30 s expiry follows the
    topic in its own thread; its ``on_change`` stamps every start and stop of the
    watched user, so even a gap shorter than a sample shows. Another thread
    samples once a second which instances list the user, and notes when the
    bridge's count of ``USER_SYNC`` lines last grew (the bridge reads them from
    Redis; its ``/metrics`` lags by at most a second, which only makes the waits
    built on it longer).
    """

    def __init__(
        self, bootstrap: str, prefix: str, user_id: str, bridge: SynkafkaChild
    ) -> None:
        self.user_id = user_id
        self._bridge = bridge
        self.follower = PresenceFollower(
            Consumer(KafkaSettings(bootstrap_servers=bootstrap), "e2e-presence"),
            prefix,
            expiry_ms=READER_EXPIRY_MS,
            on_change=self._on_change,
        )
        self._lock = threading.Lock()
        # (wall time, "started" | "stopped") of the watched user, in order.
        self.changes: list[tuple[float, str]] = []
        # Every instance ID a sample found listing the user.
        self.instance_ids: set[str] = set()
        # Wall times of samples (after the first listing) that found no instance.
        self.unlisted_samples: list[float] = []
        self.samples = 0
        self.user_sync_at: float | None = None
        """Wall time at which the bridge's ``USER_SYNC`` count last grew."""
        self.user_sync_lines = 0
        """``USER_SYNC`` lines the bridge read, over all its runs (as sampled)."""
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._sample_loop, name="presence-watch", daemon=True
        )

    def _on_change(self, change: PresenceChange) -> None:
        # Called by the follower's thread, under its lock.
        now = time.time()
        with self._lock:
            if self.user_id in change.started:
                self.changes.append((now, "started"))
            if self.user_id in change.stopped:
                self.changes.append((now, "stopped"))

    def start(self) -> None:
        self.follower.start()  # replays in this thread, then follows in its own
        self._thread.start()

    def listing(self) -> set[str]:
        """The instance IDs that list the watched user now."""
        return {
            instance_id
            for instance_id, snapshot in self.follower.state().items()
            if any(d.user_id == self.user_id for d in snapshot.syncing)
        }

    def _sample_loop(self) -> None:
        last_count = 0.0
        try:
            while not self._stop.wait(1.0):
                listed = self.listing()
                with self._lock:
                    self.samples += 1
                    if listed:
                        self.instance_ids |= listed
                    elif self.instance_ids:
                        self.unlisted_samples.append(time.time())
                try:
                    count = self._bridge.metric(
                        "synkafka_bridge_lines_total", command="USER_SYNC"
                    )
                except OSError:
                    continue  # the bridge is down (killed on purpose)
                # A restarted bridge counts from 0 again: only growth is a line.
                if count > last_count:
                    self.user_sync_at = time.time()
                    self.user_sync_lines += int(count - last_count)
                last_count = count
        except BaseException as exc:  # noqa: BLE001 - re-raised by check()
            self.error = exc

    def check(self) -> None:
        """Fail at once if the follower or the sampler died."""
        for what, error in (
            ("presence follower", self.follower.failure),
            ("presence sampler", self.error),
        ):
            if error is not None:
                raise AssertionError(f"the {what} failed: {error!r}")

    def stops_after(self, since: float) -> list[float]:
        """Wall times at which the user left the view after ``since``."""
        with self._lock:
            return [at for at, kind in self.changes if kind == "stopped" and at > since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.follower.close()


class ExitTap:
    """Reads the ``presence`` stream topic and the presence topic from given offsets.

    Notes the Kafka timestamp (set by the bridge when it published) of the first
    ``offline`` row for ``user_id`` and of the first tombstone of ``instance_id``.
    """

    def __init__(
        self,
        bootstrap: str,
        heads: dict[tuple[str, int], int],
        stream_topic: str,
        presence_topic: str,
        user_id: str,
        instance_id: str,
    ) -> None:
        self._consumer = Consumer(KafkaSettings(bootstrap_servers=bootstrap), "e2e-tap")
        self._consumer.assign([PartitionStart(t, p, o) for (t, p), o in heads.items()])
        self._stream_topic = stream_topic
        self._presence_topic = presence_topic
        self._user_id = user_id
        self._instance_key = topics.presence_key(instance_id).encode()
        self.offline_row_at: float | None = None
        self.tombstone_at: float | None = None
        self.rows: list[tuple[float, str, int]] = []
        """(Kafka time, state, last_user_sync_ts) of every row for the user."""

    def poll(self, timeout_s: float) -> None:
        for record in self._consumer.poll_batch(1000, timeout_s):
            at = record.timestamp_ms / 1000
            if record.topic == self._presence_topic:
                if record.key == self._instance_key and record.value is None:
                    self.tombstone_at = self.tombstone_at or at
                continue
            if record.topic != self._stream_topic or record.value is None:
                continue
            try:
                command = decode(record.value)
            except DecodeError:
                continue  # not ours to judge here; the consumers count those
            if not isinstance(command, RdataCommand):
                continue
            for row in command.rows:
                if isinstance(row, PresenceRow) and row.user_id == self._user_id:
                    self.rows.append((at, row.state, row.last_user_sync_ts))
                    if row.state == "offline" and self.offline_row_at is None:
                        self.offline_row_at = at

    def close(self) -> None:
        self._consumer.close()


def synapse_presence(client: MatrixClient, user_id: str) -> str:
    """What Synapse's presence writer says of ``user_id`` (``error: ...`` on failure)."""
    try:
        answer = client.request(
            "GET",
            f"/_matrix/client/v3/presence/{urllib.parse.quote(user_id, safe='')}/status",
            timeout_s=5,
        )
    except (MatrixError, OSError) as exc:
        return f"error: {exc}"
    return str(answer.get("presence"))


def user_presence_rows(
    bootstrap: str, prefix: str, user_id: str
) -> list[tuple[float, str, int]]:
    """(Kafka time, state, last_user_sync_ts) of every ``presence`` row for the user."""
    topic = topics.stream_topic(prefix, "presence")
    out: list[tuple[float, str, int]] = []
    for record in read_range(bootstrap, {}, topic_heads(bootstrap, [topic])):
        if record.value is None:
            continue
        command = decode(record.value)
        if isinstance(command, RdataCommand):
            out.extend(
                (record.timestamp_ms / 1000, row.state, row.last_user_sync_ts)
                for row in command.rows
                if isinstance(row, PresenceRow) and row.user_id == user_id
            )
    return out


def stop_one_by_one(loops: Sequence[SyncLoop], gap_s: float) -> threading.Thread:
    """Stop ``loops`` one at a time, ``gap_s`` apart, in a background thread.

    Synapse's ``/sync`` worker sends ``USER_SYNC ... end`` in a loop every 10 s for
    users quiet for 10 s; more than 10 s between stops gives one line per user,
    each in a moment of its own (how the bridge ties the instance to a connection).
    """

    def run() -> None:
        for n, loop in enumerate(loops):
            if n:
                time.sleep(gap_s)  # paces the users, as clients leaving one by one
            loop.stop()

    thread = threading.Thread(target=run, name="stop-syncing", daemon=True)
    thread.start()
    return thread


@dataclass
class WorkerExit:
    """What one worker's exit looked like, in seconds after the signal.

    Attributes:
        how: ``SIGKILL`` or ``SIGTERM``.
        ours: when the reader of the presence topic dropped the user (None: never
            within the deadline).
        tombstone: the Kafka time of the bridge's tombstone of the instance.
        synapse_then: Synapse's answer for the user right after ``ours``.
        synapse_offline: when Synapse's status first left ``online``, if it did
            while the test watched.
        watched: how long the test watched after the signal.
        answers: Synapse's status answers while the test watched.
    """

    how: str
    ours: float | None = None
    tombstone: float | None = None
    synapse_then: str = ""
    synapse_offline: float | None = None
    watched: float = 0.0
    answers: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """The numbers, for the test's report."""

        def at(value: float | None) -> str:
            return "never" if value is None else f"{value:+7.1f}"

        offline = (
            at(self.synapse_offline)
            if self.synapse_offline is not None
            else f"still online at {self.watched:+.1f}"
        )
        return [
            (
                f"presence after the {self.how} of sync1, seconds after the signal "
                f"(status answers {dict(self.answers)}):"
            ),
            f"  (a) our view drops the watcher             {at(self.ours)}",
            f"      Synapse's answer right then            {self.synapse_then}",
            f"  bridge's tombstone of the instance         {at(self.tombstone)}",
            f"  (b) Synapse's status leaves online         {offline}",
        ]


def measure_exit(
    how: str,
    signal_worker: Callable[[], object],
    watch: PresenceWatch,
    tap: ExitTap,
    ask: Callable[[], str],
    *,
    deadline_s: float,
    check: Callable[[], None],
) -> WorkerExit:
    """Signal the worker, then poll until the reader drops the user and the tombstone is seen.

    ``ask`` returns Synapse's presence answer for the user; it is asked every second
    and once more right after the reader drops the user, so an ``online`` then
    proves that our drop came first. ``check`` fails the test at once (a child died).
    """
    result = WorkerExit(how)
    signalled = time.time()
    signal_worker()
    deadline = time.monotonic() + deadline_s
    next_ask = 0.0
    while time.monotonic() < deadline:
        check()
        watch.check()
        if time.monotonic() >= next_ask:
            next_ask = time.monotonic() + 1.0
            answer = ask()
            result.answers[answer.partition(":")[0]] += 1
            if answer != "online" and not answer.startswith("error"):
                result.synapse_offline = result.synapse_offline or (
                    time.time() - signalled
                )
        dropped = watch.stops_after(signalled)
        if dropped and result.ours is None:
            result.ours = dropped[0] - signalled
            result.synapse_then = ask()
        tap.poll(0.2)
        if result.ours is not None and tap.tombstone_at is not None:
            break
    if tap.tombstone_at is not None:
        result.tombstone = tap.tombstone_at - signalled
    result.watched = time.time() - signalled
    return result
