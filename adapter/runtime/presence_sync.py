"""``PresenceSync``: one process's syncing set on the compacted presence topic.

This is the shell around :class:`~adapter.core.presence.SyncTracker` (the rules live
there). It owns the threading, the clock and the producer:

* :meth:`PresenceSync.sync_started` / :meth:`PresenceSync.sync_ended` (or the
  :meth:`PresenceSync.syncing` context manager) count in-flight syncs; they may be
  called from any thread.
* :meth:`PresenceSync.start` announces the instance (its first snapshot, waited for)
  and starts a background thread that publishes the debounced snapshots and the
  heartbeats :meth:`SyncTracker.due` asks for, keyed by the instance ID.
* :meth:`PresenceSync.close` is the shutdown hook: it stops the thread, publishes the
  clear (:class:`~adapter.core.commands.ClearUserSyncsCommand`, same key) and **waits for
  its delivery report** before returning. The CLI turns SIGTERM and SIGINT into a
  normal return from its main loop, and ``register_atexit`` covers a normal
  interpreter exit, so a stopped process never leaves its users syncing until the
  expiry (a real Synapse worker does: docs/presence.md). A process killed
  with SIGKILL cannot clear; the presence writer's expiry covers that.

Ordering: snapshots and the clear are produced under one lock, on one key, by one
idempotent producer, so the broker stores the clear after the last snapshot and no
snapshot can follow it (after :meth:`SyncTracker.clear`, ``due`` returns nothing).

The presence writer publishes nothing (matrix-org/synapse#7257): give it no
publisher, ``is_presence_writer=True`` and its own view; its set goes straight into
that view. When the view is shared with a
:class:`~adapter.runtime.presence_follower.PresenceFollower`, pass the follower's lock.

Instance IDs are 12 random ASCII letters (:func:`new_instance_id`), new at every
start. Synapse uses 5 (``random_string(5)``); ours are keys of a long-lived compacted
topic, and two processes sharing an ID would clear each other's users, so they are
made long enough never to collide (52**12, about 4e20).
"""

from __future__ import annotations

import atexit
import logging
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Protocol

from adapter.core.commands import ClearUserSyncsCommand, Command
from adapter.core.errors import ConfigError, DeliveryError, KafkaIOError
from adapter.core.presence import (
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_STOP_DELAY_MS,
    PresenceView,
    SyncTracker,
)
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.io.kafka.producer import Delivered, DeliveryCallback
from adapter.io.metrics import Metrics

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT_S",
    "INSTANCE_ID_LENGTH",
    "Clock",
    "PresencePublisher",
    "PresenceSync",
    "new_instance_id",
    "wall_clock_ms",
]

logger = logging.getLogger(__name__)

#: Letters in an instance ID (Synapse uses 5; see the module docstring).
INSTANCE_ID_LENGTH: Final = 12
#: How long :meth:`PresenceSync.close` waits for the clear's delivery report.
DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 5.0
# The background thread wakes at least this often to serve delivery reports.
_MAX_IDLE_S: Final = 0.25

#: Milliseconds since the epoch; injected so tests can drive time.
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    """Return the wall-clock time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def new_instance_id(length: int = INSTANCE_ID_LENGTH) -> str:
    """Return a fresh random instance ID of ASCII letters (as Synapse's ``random_string``)."""
    return "".join(secrets.choice(string.ascii_letters) for _ in range(length))


class _ReportServer(Protocol):
    def poll(self, timeout_s: float = 0.0) -> int: ...


class PresencePublisher(Protocol):
    """What :class:`PresenceSync` needs of a publisher (:class:`~adapter.runtime.publisher.Publisher` fits)."""

    @property
    def producer(self) -> _ReportServer:
        """The producer, whose ``poll`` serves delivery reports."""
        ...

    def publish(
        self,
        command: Command | PresenceSnapshot,
        *,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Encode and produce one record (routing presence to the presence topic)."""
        ...

    def flush(
        self, timeout_s: float = 30.0, *, interrupt: threading.Event | None = None
    ) -> None:
        """Wait until every record produced so far is acknowledged (or ``interrupt``)."""
        ...


class PresenceSync:
    """Publishes this process's syncing set and clears it on shutdown.

    Args:
        publisher: routes snapshots and the clear to the presence topic. ``None``
            only for the presence writer.
        instance_name: the worker name shown to humans.
        instance_id: the topic key; a fresh :func:`new_instance_id` by default.
        is_presence_writer: publish nothing; feed ``local_view`` instead.
        local_view: the presence writer's own view (required for, and only for,
            the presence writer).
        lock: the lock guarding ``local_view`` when another thread (a
            :class:`~adapter.runtime.presence_follower.PresenceFollower`) uses it too.
        clock: milliseconds since the epoch.
        metrics: where to count published snapshots and clears.
        stop_delay_ms: see :class:`~adapter.core.presence.SyncTracker`.
        debounce_ms: see :class:`~adapter.core.presence.SyncTracker`.
        heartbeat_interval_ms: see :class:`~adapter.core.presence.SyncTracker`.

    Raises:
        ConfigError: inconsistent settings (a publisher missing, or given to the
            presence writer; see also :class:`~adapter.core.presence.SyncTracker`).
    """

    def __init__(
        self,
        publisher: PresencePublisher | None,
        instance_name: str,
        *,
        instance_id: str | None = None,
        is_presence_writer: bool = False,
        local_view: PresenceView | None = None,
        lock: threading.Lock | threading.RLock | None = None,
        clock: Clock = wall_clock_ms,
        metrics: Metrics | None = None,
        stop_delay_ms: int = DEFAULT_STOP_DELAY_MS,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
    ) -> None:
        if is_presence_writer and publisher is not None:
            raise ConfigError(
                "the presence writer publishes nothing: give no publisher"
            )
        if not is_presence_writer and publisher is None:
            raise ConfigError(
                "a publisher is required unless this is the presence writer"
            )
        self._tracker = SyncTracker(
            instance_id or new_instance_id(),
            instance_name,
            is_presence_writer=is_presence_writer,
            local_view=local_view,
            stop_delay_ms=stop_delay_ms,
            debounce_ms=debounce_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )
        self._publisher = publisher
        self._clock = clock
        self._metrics = metrics
        self._cond = threading.Condition(lock or threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._cleared_at: Delivered | None = None
        self._atexit = False
        self.failure: KafkaIOError | None = None
        """The error that stopped the background thread, if one did."""

    # -- identity ----------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        """The random per-process ID: the key of every record this process writes."""
        return self._tracker.instance_id

    @property
    def instance_name(self) -> str:
        """The worker name."""
        return self._tracker.instance_name

    @property
    def is_presence_writer(self) -> bool:
        """Whether this process is the presence writer (and publishes nothing)."""
        return self._tracker.is_presence_writer

    # -- inputs ------------------------------------------------------------------------

    def sync_started(self, user_id: str, device_id: str | None = None) -> None:
        """Count one more in-flight sync of (user, device); thread-safe."""
        with self._cond:
            self._tracker.sync_started(user_id, device_id, self._clock())
            self._cond.notify()

    def sync_ended(self, user_id: str, device_id: str | None = None) -> None:
        """Count one in-flight sync of (user, device) less; thread-safe.

        Raises:
            ConfigError: the device has no sync in flight.
        """
        with self._cond:
            self._tracker.sync_ended(user_id, device_id, self._clock())
            self._cond.notify()

    @contextmanager
    def syncing(self, user_id: str, device_id: str | None = None) -> Iterator[None]:
        """Count a sync as in flight for the duration of a ``with`` block.

        Example::

            with presence.syncing("@bob:example.com", "PHONE"):
                serve_sync_request()
        """
        self.sync_started(user_id, device_id)
        try:
            yield
        finally:
            self.sync_ended(user_id, device_id)

    # -- life cycle --------------------------------------------------------------------

    def start(
        self,
        *,
        register_atexit: bool = True,
        timeout_s: float = 30.0,
        stop: threading.Event | None = None,
    ) -> bool:
        """Announce the instance, then publish in a background thread.

        The first snapshot is published and flushed here, so a broker that cannot be
        reached fails the start rather than the first heartbeat.

        Args:
            register_atexit: also run :meth:`close` at a normal interpreter exit.
            timeout_s: how long to wait for the first snapshot's delivery.
            stop: when set while waiting for that delivery, give up waiting and
                return False: the caller is stopping, and :meth:`close` will publish
                the clear and say whether it was delivered.

        Returns:
            True once started; False when ``stop`` ended the wait.

        Raises:
            DeliveryError: the first snapshot was not acknowledged in time.
        """
        if self._thread is not None or self._closed:
            raise RuntimeError("PresenceSync can be started once")
        self.run_once()
        if self._publisher is not None:
            try:
                self._publisher.flush(timeout_s, interrupt=stop)
            except DeliveryError:
                if stop is None or not stop.is_set():
                    raise
                return False
        if register_atexit:
            atexit.register(self.close)
            self._atexit = True
        self._thread = threading.Thread(
            target=self._run, name=f"presence-sync-{self.instance_id}", daemon=True
        )
        self._thread.start()
        return True

    def run_once(self, now_ms: int | None = None) -> PresenceSnapshot | None:
        """Publish a snapshot if one is due now; what the background thread repeats.

        Tests call this with a driven clock instead of starting the thread.

        Args:
            now_ms: the time to judge by; the clock's by default.

        Returns:
            The snapshot produced, or ``None`` (nothing due, the presence writer, or
            already closed).

        Raises:
            KafkaIOError: the producer failed (this or an earlier record).
        """
        with self._cond:
            return self._publish_due(self._clock() if now_ms is None else now_ms)

    def close(self, timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> Delivered | None:
        """Clear this instance and wait for the clear's delivery report.

        Stops the background thread, tells the tracker to forget every sync,
        publishes :class:`~adapter.core.commands.ClearUserSyncsCommand` keyed by the
        instance ID and flushes. Calling it again returns the first result.

        Args:
            timeout_s: how long to wait for the thread and for the delivery report.

        Returns:
            Where the broker stored the clear; ``None`` for the presence writer (its
            own view dropped the instance, nothing was published).

        Raises:
            DeliveryError: the clear (or an earlier record) was not acknowledged.
        """
        if self._closed:
            return self._cleared_at
        self._closed = True
        if self._atexit:
            atexit.unregister(self.close)
            self._atexit = False
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning(
                    "presence sync thread did not stop within %.1f s", timeout_s
                )
        delivered: list[Delivered] = []
        with self._cond:
            if not self._tracker.clear() or self._publisher is None:
                logger.info(
                    "presence writer %s stopped; nothing to clear", self.instance_id
                )
                return None
            self._publisher.publish(
                ClearUserSyncsCommand(self.instance_id),
                on_delivery=self._on_delivery("clear", delivered),
            )
        try:
            self._publisher.flush(max(0.1, deadline - time.monotonic()))
        except DeliveryError as exc:
            # Nothing more can be done from here; say what that means for the
            # other instances rather than only that records are pending.
            raise DeliveryError(
                f"the clear of presence instance {self.instance_id} was not "
                f"delivered ({exc}); other instances keep its syncs until its "
                "heartbeats expire",
                retriable=True,
            ) from exc
        if not delivered:
            raise DeliveryError(
                f"clear of presence instance {self.instance_id} was not acknowledged",
                retriable=True,
            )
        self._cleared_at = delivered[0]
        logger.info(
            "cleared presence instance %s at %s[%d]@%d",
            self.instance_id,
            delivered[0].topic,
            delivered[0].partition,
            delivered[0].offset,
        )
        return self._cleared_at

    def __enter__(self) -> PresenceSync:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _on_delivery(
        self, kind: str, sink: list[Delivered] | None = None
    ) -> DeliveryCallback:
        metrics = self._metrics

        def report(error: DeliveryError | None, delivered: Delivered | None) -> None:
            # Runs in whichever thread serves delivery reports; touches no shared state
            # but the list it was given and thread-safe counters.
            if error is not None or delivered is None:
                return
            if sink is not None:
                sink.append(delivered)
            if metrics is not None:
                metrics.presence_published.labels(kind).inc()

        return report

    def _publish_due(self, now_ms: int) -> PresenceSnapshot | None:
        # Caller holds the lock.
        snapshot = self._tracker.due(now_ms)
        if snapshot is None or self._publisher is None:
            return None
        self._publisher.publish(snapshot, on_delivery=self._on_delivery("snapshot"))
        return snapshot

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                now = self._clock()
                try:
                    self._publish_due(now)
                except KafkaIOError as exc:
                    # The producer's failures are sticky (it cannot keep order past a
                    # lost record): stop publishing and let the owner restart us.
                    logger.exception("presence sync %s stopped", self.instance_id)
                    self.failure = exc
                    return
                if self._publisher is not None:
                    # Delivery reports (and so the metrics) are served only by poll.
                    self._publisher.producer.poll(0)
                due = self._tracker.next_due_ms(now)
                wait_s = _MAX_IDLE_S if due is None else (due - now) / 1000
                self._cond.wait(min(max(wait_s, 0.001), _MAX_IDLE_S))
