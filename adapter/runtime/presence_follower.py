"""``PresenceFollower``: the presence writer's view of the compacted presence topic.

The shell around :class:`~adapter.core.presence.PresenceView` (the fold lives there). It
follows quix-streams' changelog recovery: note each partition's high watermark, read
from the beginning up to it (the *replay*; the view is then complete), then keep
following live. On the way it:

* applies snapshots (:class:`~adapter.core.presence_snapshot.PresenceSnapshot`), clears
  (:class:`~adapter.core.commands.ClearUserSyncsCommand`) and tombstones (a null value);
* every ``expire_interval_s`` calls :meth:`PresenceView.expire` and, when it owns a
  producer, writes a **tombstone** for each dead instance, so the compacted topic does
  not keep dead instance IDs forever (reading our own tombstone back is a no-op);
* writes a tombstone for each cleared instance ``clear_tombstone_delay_ms`` after
  the clear was read. The clear already removed the instance from every view; the
  tombstone lets compaction drop the key (a clear is a value and would be kept
  forever). The delay leaves live followers time to see the clear itself, the
  CLEAR_USER_SYNC that Synapse-minded consumers act on; a reader that comes later
  sees only the tombstone, which the view treats the same way.
* counts and skips bad records: an undecodable value, an unknown schema
  fingerprint, a command that has no business on this topic, a snapshot whose key is
  not its instance ID. The view keeps what it had for that key (the instance's next
  heartbeat replaces the bad record, also in the compacted log).

Only the presence writer's follower should write tombstones (give it a producer);
``synkafka presence`` builds a read-only one.

Edge-triggered ``USER_SYNC`` records (from a bridge that relays a real Synapse) are
folded into the instance's set, with the record's timestamp as its heartbeat, as
Synapse's presence writer does. They inherit Synapse's flapping and, since compaction
keeps only the last record per key, a replay after compaction knows only the last
edge: a bridge should rather publish whole sets.

Thread safety: :meth:`PresenceFollower.run` (or the thread of :meth:`start`) applies
records under :attr:`PresenceFollower.lock`; the query methods take it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from adapter.codec.avro_codec import decode
from adapter.core import topics
from adapter.core.commands import ClearUserSyncsCommand, UserSyncCommand
from adapter.core.errors import ConfigError, DecodeError, DeliveryError
from adapter.core.feed import FeedEvent
from adapter.core.presence import (
    DEFAULT_EXPIRY_MS,
    InstanceSummary,
    PresenceChange,
    PresenceCounts,
    PresenceView,
)
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from adapter.io.kafka.consumer import BEGINNING, PartitionStart
from adapter.io.kafka.producer import Delivered, DeliveryCallback
from adapter.io.kafka.records import KafkaRecord
from adapter.io.metrics import Metrics
from adapter.runtime.presence_sync import Clock, wall_clock_ms

__all__ = [
    "DEFAULT_CLEAR_TOMBSTONE_DELAY_MS",
    "DEFAULT_EXPIRE_INTERVAL_S",
    "PresenceFollower",
    "ReplayStats",
    "TombstoneProducer",
    "TopicReader",
]

logger = logging.getLogger(__name__)

#: Synapse's ``_handle_timeouts`` runs every 5 s.
DEFAULT_EXPIRE_INTERVAL_S: Final = 5.0
#: How long a cleared instance's key waits for its tombstone (see the module docstring).
DEFAULT_CLEAR_TOMBSTONE_DELAY_MS: Final = 60_000
#: Header value naming a tombstone, so tools can route it without a value.
TOMBSTONE_HEADER: Final = b"TOMBSTONE"
# Records per poll, and how long one poll waits for the first record.
_BATCH: Final = 1000
_POLL_TIMEOUT_S: Final = 0.1


class TopicReader(Protocol):
    """What the follower needs of a consumer (:class:`~adapter.io.kafka.consumer.Consumer` fits)."""

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        """The topic's partition numbers; empty if it does not exist."""
        ...

    def watermarks(
        self, topic: str, partition: int, timeout_s: float = 10.0
    ) -> tuple[int, int]:
        """``(low, high)`` offsets of one partition."""
        ...

    def assign(self, starts: Sequence[PartitionStart]) -> None:
        """Read these partitions from these offsets."""
        ...

    def poll_batch(self, max_records: int, timeout_s: float) -> list[KafkaRecord]:
        """Up to ``max_records`` records."""
        ...

    def close(self) -> None:
        """Release the client."""
        ...


class TombstoneProducer(Protocol):
    """What the follower needs to write tombstones (:class:`~adapter.io.kafka.producer.Producer` fits)."""

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        on_delivery: DeliveryCallback | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        """Queue one record."""
        ...

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports."""
        ...

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every queued record."""
        ...


@dataclass(frozen=True, slots=True)
class ReplayStats:
    """How the start-up replay went.

    Attributes:
        records: records read up to the pinned high watermarks.
        seconds: how long the replay took.
        high_watermarks: the pinned high watermark of each partition.
    """

    records: int
    seconds: float
    high_watermarks: Mapping[int, int]


class PresenceFollower:
    """Replays, then follows, the presence topic into a :class:`PresenceView`.

    Args:
        reader: a consumer dedicated to this follower (it is assigned here).
        prefix: the topic prefix.
        producer: writes tombstones for expired and cleared instances; ``None``
            makes a read-only follower.
        view: the view to fold into (a new one with ``expiry_ms`` by default). The
            presence writer shares it with its own
            :class:`~adapter.runtime.presence_sync.PresenceSync`, with :attr:`lock`.
        expiry_ms: heartbeat age after which an instance is dead (for a new view).
        expire_interval_s: how often to expire dead instances once replayed.
        clear_tombstone_delay_ms: how long after a clear its tombstone is written.
        replay_idle_s: during the replay, a partition that yields nothing for this
            long is taken as replayed although its last offsets were never seen
            (they held tombstones that compaction removed after
            ``delete.retention.ms``).
        clock: milliseconds since the epoch.
        metrics: presence gauges, expired instances, decode failures.
        on_change: called (under the lock) with each change of who syncs anywhere.

    Raises:
        ConfigError: a negative interval or delay.
    """

    def __init__(
        self,
        reader: TopicReader,
        prefix: str,
        *,
        producer: TombstoneProducer | None = None,
        view: PresenceView | None = None,
        expiry_ms: int = DEFAULT_EXPIRY_MS,
        expire_interval_s: float = DEFAULT_EXPIRE_INTERVAL_S,
        clear_tombstone_delay_ms: int = DEFAULT_CLEAR_TOMBSTONE_DELAY_MS,
        replay_idle_s: float = 2.0,
        clock: Clock = wall_clock_ms,
        metrics: Metrics | None = None,
        on_change: Callable[[PresenceChange], None] | None = None,
    ) -> None:
        if expire_interval_s <= 0 or clear_tombstone_delay_ms < 0 or replay_idle_s <= 0:
            raise ConfigError(
                "expire_interval_s and replay_idle_s must be positive, "
                "clear_tombstone_delay_ms not negative"
            )
        self._prefix = prefix
        self.topic = topics.presence_topic(prefix)
        self.view = view if view is not None else PresenceView(expiry_ms=expiry_ms)
        self.lock = threading.RLock()
        """Guards :attr:`view`; hold it to read the view from another thread."""
        self._reader = reader
        self._producer = producer
        self._expire_interval_ms = int(expire_interval_s * 1000)
        self._clear_delay_ms = clear_tombstone_delay_ms
        self._replay_idle_s = replay_idle_s
        self._clock = clock
        self._metrics = metrics
        self._on_change = on_change
        # Cleared instances waiting for their tombstone: instance ID -> when cleared.
        self._cleared: dict[str, int] = {}
        self._assigned = False
        self._replayed = False
        self._last_expire_ms: int | None = None
        self.records = 0
        """Records applied (or skipped as bad) so far."""
        self.tombstones_written = 0
        """Tombstones this follower produced."""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.failure: BaseException | None = None
        """The error that stopped :meth:`start`'s thread, if one did."""

    # -- replay and follow ---------------------------------------------------------------

    @property
    def replayed(self) -> bool:
        """Whether the replay up to the pinned high watermarks has finished."""
        return self._replayed

    def replay(self) -> ReplayStats:
        """Read the topic from the beginning up to its high watermarks as of now.

        Returns:
            What was read.

        Raises:
            ConfigError: the presence topic does not exist.
            ConsumeError: the broker failed.
        """
        started = time.monotonic()
        partitions = self._reader.partitions(self.topic)
        if not partitions:
            raise ConfigError(topics.missing_topic_message(self.topic, self._prefix))
        pinned = {p: self._reader.watermarks(self.topic, p) for p in partitions}
        self._reader.assign(
            [PartitionStart(self.topic, p, BEGINNING) for p in partitions]
        )
        self._assigned = True
        # Partitions with records below their pinned high watermark still to read.
        pending = {p for p, (low, high) in pinned.items() if high > low}
        read = 0
        idle_since = time.monotonic()
        while pending:
            batch = self._reader.poll_batch(_BATCH, _POLL_TIMEOUT_S)
            if batch:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self._replay_idle_s:
                logger.info(
                    "%s: nothing more below the pinned high watermark of "
                    "partitions %s; the tail was compacted away",
                    self.topic,
                    sorted(pending),
                )
                break
            self._apply_batch(batch)
            read += len(batch)
            for record in batch:
                if record.offset >= pinned[record.partition][1] - 1:
                    pending.discard(record.partition)
        self._replayed = True
        stats = ReplayStats(
            records=read,
            seconds=time.monotonic() - started,
            high_watermarks={p: high for p, (_low, high) in pinned.items()},
        )
        logger.info(
            "replayed %d presence records from %s in %.3f s: %d instances",
            stats.records,
            self.topic,
            stats.seconds,
            self.counts().instances,
        )
        self.maintain()
        return stats

    def poll_once(self, timeout_s: float = _POLL_TIMEOUT_S) -> int:
        """Apply the next batch of live records and run due maintenance.

        Replays first if that has not happened yet.

        Returns:
            How many records were read.
        """
        if not self._replayed:
            self.replay()
        batch = self._reader.poll_batch(_BATCH, timeout_s)
        self._apply_batch(batch)
        self.maintain()
        return len(batch)

    def run(self, stop: threading.Event) -> None:
        """Replay, then follow until ``stop`` is set."""
        if not self._replayed:
            self.replay()
        while not stop.is_set():
            self.poll_once()

    def start(self) -> ReplayStats:
        """Replay in this thread, then follow in a background thread.

        Returns:
            The replay's statistics.
        """
        stats = self.replay()
        self._thread = threading.Thread(
            target=self._run_thread, name="presence-follower", daemon=True
        )
        self._thread.start()
        return stats

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (if started), flush tombstones and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            if self._producer is not None:
                self._producer.flush(timeout_s)
        finally:
            self._reader.close()

    def _run_thread(self) -> None:
        try:
            self.run(self._stop)
        except BaseException as exc:  # outermost loop: kept for the owner
            logger.exception("presence follower of %s stopped", self.topic)
            self.failure = exc

    # -- maintenance ---------------------------------------------------------------------

    def maintain(self, now_ms: int | None = None) -> list[str]:
        """Expire dead instances and tombstone them and old clears, when due.

        Runs at most every ``expire_interval_s`` (and only after the replay); called
        by :meth:`poll_once`.

        Args:
            now_ms: the time to judge by; the clock's by default.

        Returns:
            The instance IDs expired by this call.
        """
        if not self._replayed:
            return []
        now = self._clock() if now_ms is None else now_ms
        if (
            self._last_expire_ms is not None
            and now - self._last_expire_ms < self._expire_interval_ms
        ):
            self._serve_reports()
            return []
        self._last_expire_ms = now
        with self.lock:
            # expire() reports instance IDs only; who stopped syncing because of it
            # is the difference of the syncing sets (computed only if someone asks).
            before = self.view.syncing_users() if self._on_change else frozenset()
            expired = self.view.expire(now)
            if expired and self._on_change is not None:
                self._changed(
                    PresenceChange(stopped=before - self.view.syncing_users())
                )
            done = [
                i for i, at in self._cleared.items() if now - at >= self._clear_delay_ms
            ]
            for instance_id in done:
                del self._cleared[instance_id]
            self._update_gauges()
        if expired:
            logger.info("presence instances expired: %s", ", ".join(expired))
            if self._metrics is not None:
                self._metrics.presence_expired.inc(len(expired))
        for instance_id in [*expired, *done]:
            self._write_tombstone(instance_id)
        self._serve_reports()
        return expired

    def _write_tombstone(self, instance_id: str) -> None:
        if self._producer is None:
            return
        metrics = self._metrics

        def report(error: DeliveryError | None, delivered: Delivered | None) -> None:
            if error is None and delivered is not None and metrics is not None:
                metrics.presence_published.labels("tombstone").inc()

        self._producer.produce(
            self.topic,
            None,
            key=topics.presence_key(instance_id),
            headers=[(topics.HEADER_COMMAND, TOMBSTONE_HEADER)],
            on_delivery=report,
        )
        self.tombstones_written += 1

    def _serve_reports(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)

    # -- applying records ----------------------------------------------------------------

    def _apply_batch(self, batch: Sequence[KafkaRecord]) -> None:
        if not batch:
            return
        with self.lock:
            now = self._clock()
            for record in batch:
                self._apply(record, now)
            self.records += len(batch)
            self._update_gauges()

    def _apply(self, record: KafkaRecord, now_ms: int) -> None:
        # Caller holds the lock.
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        if record.value is None:
            if key is None:
                self._bad(record, "tombstone without a key")
                return
            # A tombstone: after a clear, after an expiry, or one we wrote ourselves
            # (a no-op then).
            self._cleared.pop(key, None)
            self._changed(self.view.apply_tombstone(key))
            return
        try:
            value = decode(record.value)
        except DecodeError as exc:
            self._bad(record, exc.reason)
            return
        if isinstance(value, PresenceSnapshot):
            if key != value.instance_id:
                self._bad(record, f"snapshot of {value.instance_id} under key {key}")
                return
            self._cleared.pop(value.instance_id, None)
            self._changed(self.view.apply_snapshot(value, now_ms))
        elif isinstance(value, ClearUserSyncsCommand):
            self._cleared.setdefault(value.instance_id, now_ms)
            self._changed(self.view.apply_clear(value.instance_id))
        elif isinstance(value, UserSyncCommand):
            self._apply_user_sync(value, record.timestamp_ms or now_ms, now_ms)
        else:
            what = "a feed event" if isinstance(value, FeedEvent) else value.NAME
            self._bad(record, f"{what} does not belong on the presence topic")

    def _apply_user_sync(
        self, command: UserSyncCommand, heartbeat_ms: int, now_ms: int
    ) -> None:
        # Synapse's on_USER_SYNC, as a new whole set for the instance.
        old = self.view.state().get(command.instance_id)
        devices = {
            (d.user_id, d.device_id): d
            for d in (old.syncing if old is not None else ())
        }
        device = (command.user_id, command.device_id)
        if command.is_syncing:
            devices.setdefault(
                device,
                SyncingDevice(command.user_id, command.device_id, command.last_sync_ms),
            )
        else:
            devices.pop(device, None)
        snapshot = PresenceSnapshot(
            instance_id=command.instance_id,
            instance_name=old.instance_name if old is not None else "",
            heartbeat_ms=heartbeat_ms,
            syncing=tuple(
                sorted(
                    devices.values(),
                    key=lambda d: (
                        d.user_id,
                        d.device_id is not None,
                        d.device_id or "",
                    ),
                )
            ),
        )
        self._cleared.pop(command.instance_id, None)
        self._changed(self.view.apply_snapshot(snapshot, now_ms))

    def _bad(self, record: KafkaRecord, reason: str) -> None:
        logger.warning("skipping presence record %s: %s", record.where, reason)
        if self._metrics is not None:
            self._metrics.decode_failures.labels(record.topic).inc()

    def _changed(self, change: PresenceChange) -> None:
        if self._on_change is not None and (change.started or change.stopped):
            self._on_change(change)

    def _update_gauges(self) -> None:
        if self._metrics is not None:
            counts = self.view.counts()
            self._metrics.presence_instances.set(counts.instances)
            self._metrics.presence_syncing_users.set(counts.users)

    # -- queries -------------------------------------------------------------------------

    def instances(self, now_ms: int | None = None) -> list[InstanceSummary]:
        """Summarise every live instance, sorted by instance ID."""
        with self.lock:
            return self.view.instances(self._clock() if now_ms is None else now_ms)

    def counts(self) -> PresenceCounts:
        """Count live instances, syncing users and devices."""
        with self.lock:
            return self.view.counts()

    def is_syncing(self, user_id: str) -> bool:
        """Whether the user syncs on any live instance."""
        with self.lock:
            return self.view.is_syncing(user_id)

    def state(self) -> dict[str, PresenceSnapshot]:
        """A copy of the live instances' latest snapshots, by instance ID."""
        with self.lock:
            return self.view.state()
