"""Who is syncing where: the level-triggered replacement for USER_SYNC.

Two sides, both pure (time comes in as ``now_ms``; nothing here publishes or reads):

* :class:`SyncTracker` runs in every process that serves ``/sync``. It counts in-flight
  syncs per (user, device) and says when the process's *whole* syncing set must be
  published to the compacted presence topic (docs/presence.md).
* :class:`PresenceView` runs in the presence writer. It folds that topic, keyed by
  instance ID, into "which users are syncing anywhere, since when".

Rules:

* **Rule 1: a sync starts at 0 -> 1 in-flight requests and stops at 1 -> 0**
  (as Synapse counts them), counted per (user, device) in one process.
* **Rule 2: a stop is delayed.** A device that stops stays in the set for
  ``stop_delay_ms`` (Synapse's 10 s); if it starts again within that time nothing
  changes and nothing is published. Synapse checks every 10 s, so its delay is
  10-20 s; here it is exactly the delay, measured whenever :meth:`SyncTracker.due`
  runs.
* **Rule 3: publish state, not edges.** Every publication is the whole set with a
  heartbeat time. Changes are debounced (``debounce_ms``) so a burst of syncs becomes
  one record, and an unchanged set is republished every ``heartbeat_interval_ms``.
  A reader therefore never needs history, and compaction can keep only the latest
  record per instance.
* **Rule 4: the presence writer publishes nothing** (matrix-org/synapse#7257, PR
  #7318). Its tracker writes its set straight into its own :class:`PresenceView`.
* **Rule 5: liveness is the heartbeat, not activity.** The view drops an instance
  whose heartbeat is older than ``expiry_ms`` (Synapse's 5-minute
  ``EXTERNAL_PROCESS_EXPIRY``) and asks the caller to write a tombstone. A quiet
  instance whose users sync continuously keeps heartbeating and stays, which is the
  fix for the flapping of element-hq/synapse#16771.
* **Rule 6: the view is a fold of the topic.** Applying the compacted topic gives the
  same view as applying the full log (a clear or tombstone removes an instance; a later
  snapshot replaces an earlier one), which tests check with an in-memory log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from adapter.core.errors import ConfigError
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice

__all__ = [
    "DEFAULT_DEBOUNCE_MS",
    "DEFAULT_EXPIRY_MS",
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEFAULT_STOP_DELAY_MS",
    "InstanceSummary",
    "PresenceChange",
    "PresenceCounts",
    "PresenceView",
    "SyncTracker",
]

#: Synapse's ``UPDATE_SYNCING_USERS``: how long a stopped device stays "syncing".
DEFAULT_STOP_DELAY_MS: Final = 10_000
#: How long changes are collected before one snapshot is published.
DEFAULT_DEBOUNCE_MS: Final = 500
#: How often an unchanged set is republished to prove the instance is alive.
DEFAULT_HEARTBEAT_INTERVAL_MS: Final = 60_000
#: Synapse's ``EXTERNAL_PROCESS_EXPIRY``: an instance silent this long is dead.
DEFAULT_EXPIRY_MS: Final = 5 * 60_000

_Device = tuple[str, str | None]


def _device_order(device: SyncingDevice) -> tuple[str, bool, str]:
    # Sort by user, then device with "no device" first; None does not compare to str.
    return (device.user_id, device.device_id is not None, device.device_id or "")


def _check_non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")


class SyncTracker:
    """The syncing set of one process, and when to publish it.

    Args:
        instance_id: this process's random instance ID (the presence topic key).
        instance_name: the worker name, for humans.
        is_presence_writer: this process is the presence writer: nothing is ever
            published; the set goes into ``local_view`` instead (Rule 4).
        local_view: the writer's own view; required with ``is_presence_writer``,
            refused without it.
        stop_delay_ms: Rule 2's delay.
        debounce_ms: Rule 3's debounce.
        heartbeat_interval_ms: Rule 3's heartbeat; keep it well below the view's
            expiry (the defaults allow four missed heartbeats).

    Raises:
        ConfigError: inconsistent or negative settings.
    """

    def __init__(
        self,
        instance_id: str,
        instance_name: str,
        *,
        is_presence_writer: bool = False,
        local_view: PresenceView | None = None,
        stop_delay_ms: int = DEFAULT_STOP_DELAY_MS,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
    ) -> None:
        if not instance_id:
            raise ConfigError("instance_id must not be empty")
        if is_presence_writer != (local_view is not None):
            raise ConfigError(
                "local_view is required for, and only for, the presence writer"
            )
        _check_non_negative("stop_delay_ms", stop_delay_ms)
        _check_non_negative("debounce_ms", debounce_ms)
        if heartbeat_interval_ms <= 0:
            raise ConfigError(
                f"heartbeat_interval_ms must be positive, got {heartbeat_interval_ms}"
            )
        self.instance_id = instance_id
        self.instance_name = instance_name
        self.is_presence_writer = is_presence_writer
        self._local_view = local_view
        self._stop_delay_ms = stop_delay_ms
        self._debounce_ms = debounce_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        # In-flight /sync requests per device; a device is absent at 0.
        self._in_flight: dict[_Device, int] = {}
        # The set as published: device -> when its current streak started.
        self._syncing: dict[_Device, int] = {}
        # Devices at 0 requests that are still in the set: device -> when they stopped.
        self._stopping: dict[_Device, int] = {}
        self._changed_at: int | None = None
        self._published_at: int | None = None
        self._cleared = False

    # -- inputs ----------------------------------------------------------------------

    def sync_started(self, user_id: str, device_id: str | None, now_ms: int) -> None:
        """Count one more in-flight sync of (user, device).

        After :meth:`clear` this does nothing: the process is shutting down.
        """
        if self._cleared:
            return
        device = (user_id, device_id)
        count = self._in_flight.get(device, 0) + 1
        self._in_flight[device] = count
        if count > 1:
            return
        if self._stopping.pop(device, None) is not None:
            # A quick reconnect inside the stop delay: the set never lost the device,
            # so there is nothing to tell anyone (Synapse sends nothing either).
            return
        self._syncing[device] = now_ms
        self._changed(now_ms)

    def sync_ended(self, user_id: str, device_id: str | None, now_ms: int) -> None:
        """Count one in-flight sync of (user, device) less.

        At 0 the device stays in the set for the stop delay (Rule 2). After
        :meth:`clear` this does nothing: syncs still finishing at shutdown are covered
        by the clear.

        Raises:
            ConfigError: the device has no sync in flight (the caller lost count).
        """
        if self._cleared:
            return
        device = (user_id, device_id)
        count = self._in_flight.get(device, 0)
        if count == 0:
            raise ConfigError(
                f"sync_ended for {user_id}/{device_id} without sync_started"
            )
        if count > 1:
            self._in_flight[device] = count - 1
            return
        del self._in_flight[device]
        self._stopping[device] = now_ms

    def republish(self) -> None:
        """Make the next :meth:`due` publish at once.

        For a reconnect to the broker, where Synapse re-sends ``USER_SYNC start`` for
        every device, or when the runtime learns that its last record was lost.
        """
        self._published_at = None

    def clear(self) -> bool:
        """Forget everything: the process is shutting down.

        After this, :meth:`due` returns nothing and new syncs are ignored.

        Returns:
            ``True`` if the caller must publish the clear for this instance ID (and
            flush before exiting); ``False`` for the presence writer, whose own view
            has already dropped the instance.
        """
        self._cleared = True
        self._in_flight.clear()
        self._syncing.clear()
        self._stopping.clear()
        self._changed_at = None
        if self._local_view is not None:
            self._local_view.apply_clear(self.instance_id)
            return False
        return True

    # -- outputs -----------------------------------------------------------------------

    def snapshot(self, now_ms: int) -> PresenceSnapshot:
        """Return the whole set as published at ``now_ms``, devices sorted."""
        devices = (
            SyncingDevice(user, device, since)
            for (user, device), since in self._syncing.items()
        )
        return PresenceSnapshot(
            instance_id=self.instance_id,
            instance_name=self.instance_name,
            heartbeat_ms=now_ms,
            syncing=tuple(sorted(devices, key=_device_order)),
        )

    def due(self, now_ms: int) -> PresenceSnapshot | None:
        """Say whether a snapshot must be published now, and which.

        Call it regularly (at least at :meth:`next_due_ms`). It ends the stop delays
        that ran out, then returns a snapshot when the debounce after a change ran out,
        when the heartbeat interval passed, or when nothing was published yet. The
        returned snapshot counts as published: the caller must produce it (the
        idempotent producer retries; on a lost record call :meth:`republish`).

        The presence writer always gets ``None``: its set went to its own view.
        """
        if self._cleared:
            return None
        self._end_stops(now_ms)
        if not self._publish_due(now_ms):
            return None
        snapshot = self.snapshot(now_ms)
        self._published_at = now_ms
        self._changed_at = None
        if self._local_view is not None:
            # Rule 4: the writer's heartbeat goes to its own view, never to Kafka.
            self._local_view.apply_snapshot(snapshot, now_ms)
            return None
        return snapshot

    def next_due_ms(self, now_ms: int) -> int | None:
        """Return when :meth:`due` may next have something to do (at least ``now_ms``).

        ``None`` after :meth:`clear`.
        """
        if self._cleared:
            return None
        if self._published_at is None:
            return now_ms
        candidates = [self._published_at + self._heartbeat_interval_ms]
        if self._changed_at is not None:
            candidates.append(self._changed_at + self._debounce_ms)
        if self._stopping:
            candidates.append(min(self._stopping.values()) + self._stop_delay_ms)
        return max(now_ms, min(candidates))

    # -- internals ---------------------------------------------------------------------

    def _changed(self, now_ms: int) -> None:
        if self._local_view is not None:
            # The writer's own view needs no debounce: it is a dict update, not a record.
            self._local_view.apply_snapshot(self.snapshot(now_ms), now_ms)
            self._published_at = now_ms
            return
        if self._changed_at is None:
            # Debounce from the first unpublished change, so a steady trickle of
            # changes still goes out every debounce_ms instead of never.
            self._changed_at = now_ms

    def _end_stops(self, now_ms: int) -> None:
        ended = [
            d for d, at in self._stopping.items() if now_ms - at >= self._stop_delay_ms
        ]
        for device in ended:
            del self._stopping[device]
            del self._syncing[device]
        if ended:
            self._changed(now_ms)

    def _publish_due(self, now_ms: int) -> bool:
        if self._published_at is None:
            # First call (or after republish): announce the instance at once.
            return True
        if (
            self._changed_at is not None
            and now_ms - self._changed_at >= self._debounce_ms
        ):
            return True
        return now_ms - self._published_at >= self._heartbeat_interval_ms


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """Users whose "syncing anywhere" flipped because of one applied record.

    Attributes:
        started: users now syncing that were not before.
        stopped: users no longer syncing anywhere.
    """

    started: frozenset[str] = frozenset()
    stopped: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class InstanceSummary:
    """One instance as ``synkafka presence`` lists it.

    Attributes:
        instance_id: the random per-process ID.
        instance_name: the worker name.
        heartbeat_age_ms: how old its last heartbeat is.
        users: the users syncing there, sorted.
        devices: how many (user, device) pairs sync there.
    """

    instance_id: str
    instance_name: str
    heartbeat_age_ms: int
    users: tuple[str, ...]
    devices: int


@dataclass(frozen=True, slots=True)
class PresenceCounts:
    """Sizes of a view, for metrics."""

    instances: int
    users: int
    devices: int


class PresenceView:
    """The presence writer's fold of the presence topic (Rules 5 and 6).

    Expiry compares a snapshot's ``heartbeat_ms`` (the publisher's clock) with
    ``now_ms`` (the reader's), not with when the record was read: replaying the
    compacted topic at start-up then judges old records correctly. Clock skew between
    hosts must stay well below the expiry.

    Args:
        expiry_ms: an instance whose heartbeat is older than this is dead.

    Raises:
        ConfigError: a non-positive expiry.
    """

    def __init__(self, *, expiry_ms: int = DEFAULT_EXPIRY_MS) -> None:
        if expiry_ms <= 0:
            raise ConfigError(f"expiry_ms must be positive, got {expiry_ms}")
        self._expiry_ms = expiry_ms
        self._instances: dict[str, PresenceSnapshot] = {}
        # user -> instance ID -> earliest streak start of the user's devices there.
        self._users: dict[str, dict[str, int]] = {}
        # Instances whose latest record was already expired when it was applied.
        self._dead: set[str] = set()

    # -- applying records ----------------------------------------------------------------

    def apply_snapshot(self, snapshot: PresenceSnapshot, now_ms: int) -> PresenceChange:
        """Replace an instance's set with a newer snapshot.

        A snapshot that is already past the expiry when it arrives (replaying the
        topic after that instance died) does not bring its users online: the
        instance is dropped and :meth:`expire` reports it for a tombstone.

        Args:
            snapshot: the record's value.
            now_ms: the current time.

        Returns:
            The users whose syncing state flipped.
        """
        instance_id = snapshot.instance_id
        if self._is_expired(snapshot, now_ms):
            self._dead.add(instance_id)
            return self._remove(instance_id)
        self._dead.discard(instance_id)
        affected = self._users_of(instance_id) | {d.user_id for d in snapshot.syncing}
        was = self._syncing_among(affected)
        self._unindex(instance_id)
        self._instances[instance_id] = snapshot
        self._index(snapshot)
        return self._change(affected, was)

    def apply_clear(self, instance_id: str) -> PresenceChange:
        """Drop an instance that shut down cleanly (``CLEAR_USER_SYNC``).

        Its users stop syncing there now; those not syncing elsewhere go offline
        after the presence handler's sync timeout, as in Synapse.
        """
        self._dead.discard(instance_id)
        return self._remove(instance_id)

    def apply_tombstone(self, instance_id: str) -> PresenceChange:
        """Drop an instance whose key was deleted (after a clear or an expiry)."""
        self._dead.discard(instance_id)
        return self._remove(instance_id)

    def expire(self, now_ms: int) -> list[str]:
        """Drop every instance whose heartbeat is older than the expiry.

        Returns:
            Their instance IDs, sorted. The caller writes a tombstone for each so the
            compacted topic does not keep dead instance IDs forever; reading that
            tombstone back is then a no-op.
        """
        expired = {i for i, s in self._instances.items() if self._is_expired(s, now_ms)}
        for instance_id in expired:
            self._remove(instance_id)
        expired |= self._dead
        self._dead.clear()
        return sorted(expired)

    # -- queries -------------------------------------------------------------------------

    def is_syncing(self, user_id: str) -> bool:
        """Whether the user is syncing on any live instance."""
        return user_id in self._users

    def syncing_since(self, user_id: str) -> int | None:
        """Return since when the user syncs somewhere (earliest streak start), or ``None``."""
        since = self._users.get(user_id)
        return min(since.values()) if since else None

    def syncing_users(self) -> frozenset[str]:
        """Return every user syncing somewhere."""
        return frozenset(self._users)

    def instances(self, now_ms: int) -> list[InstanceSummary]:
        """Summarise every live instance, sorted by instance ID."""
        return [
            InstanceSummary(
                instance_id=s.instance_id,
                instance_name=s.instance_name,
                heartbeat_age_ms=now_ms - s.heartbeat_ms,
                users=tuple(sorted({d.user_id for d in s.syncing})),
                devices=len(s.syncing),
            )
            for _, s in sorted(self._instances.items())
        ]

    def counts(self) -> PresenceCounts:
        """Count live instances, syncing users and syncing devices."""
        return PresenceCounts(
            instances=len(self._instances),
            users=len(self._users),
            devices=sum(len(s.syncing) for s in self._instances.values()),
        )

    def state(self) -> dict[str, PresenceSnapshot]:
        """Return a copy of the live instances' latest snapshots, by instance ID."""
        return dict(self._instances)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PresenceView):
            return NotImplemented
        return self._instances == other._instances and self._dead == other._dead

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by state

    def __repr__(self) -> str:
        return f"PresenceView(instances={sorted(self._instances)!r})"

    # -- internals -----------------------------------------------------------------------

    def _is_expired(self, snapshot: PresenceSnapshot, now_ms: int) -> bool:
        return now_ms - snapshot.heartbeat_ms > self._expiry_ms

    def _users_of(self, instance_id: str) -> set[str]:
        old = self._instances.get(instance_id)
        return set() if old is None else {d.user_id for d in old.syncing}

    def _syncing_among(self, users: Iterable[str]) -> frozenset[str]:
        return frozenset(u for u in users if u in self._users)

    def _change(self, affected: set[str], was: frozenset[str]) -> PresenceChange:
        # Compare "syncing anywhere" before and after, so a user who also syncs on
        # another instance neither starts nor stops here.
        now = self._syncing_among(affected)
        return PresenceChange(started=now - was, stopped=was - now)

    def _remove(self, instance_id: str) -> PresenceChange:
        affected = self._users_of(instance_id)
        was = self._syncing_among(affected)
        self._unindex(instance_id)
        self._instances.pop(instance_id, None)
        return self._change(affected, was)

    def _unindex(self, instance_id: str) -> None:
        for user in self._users_of(instance_id):
            where = self._users[user]
            del where[instance_id]
            if not where:
                del self._users[user]

    def _index(self, snapshot: PresenceSnapshot) -> None:
        for device in snapshot.syncing:
            where = self._users.setdefault(device.user_id, {})
            since = where.get(snapshot.instance_id)
            # A user with several devices there syncs since the earliest streak.
            where[snapshot.instance_id] = (
                device.last_sync_ms
                if since is None
                else min(since, device.last_sync_ms)
            )
