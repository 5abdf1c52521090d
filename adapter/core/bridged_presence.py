"""Presence of a real Synapse, level-triggered from the signals it actually sends.

Synapse's ``/sync`` workers speak about presence in edges: ``USER_SYNC ... start`` when a
user starts syncing, ``... end`` 10-20 s after the last sync, the whole set again only
after a Redis reconnect, and a ``CLEAR_USER_SYNC`` at shutdown that a SIGTERM usually
loses (the Redis connection is gone before it is sent). A user who long-polls ``/sync``
without a break produces one ``start`` and nothing more, while Synapse's presence
writer keeps the user online and, about once a minute, persists the user's state as a
``presence`` stream row whose ``last_user_sync_ts`` is a few seconds old.

So the bridge keeps, per instance ID, the syncing set from the edges, and takes
liveness from the level signal:

* **Evidence.** A user's evidence is the newest ``last_user_sync_ts`` of a
  ``presence`` row for the user that is not ``offline``. It counts for the instance
  that claimed the user last (a restarted worker re-announces its users under a new
  instance ID; the old ID must not live on through them).
* **Alive** means: a ``USER_SYNC`` from the instance within ``user_sync_window_ms``
  (Synapse's own writer counts a worker's syncs for 5 minutes after the worker last
  spoke), or evidence from a ``presence`` row for one of its users within
  ``live_window_ms``. An alive instance's snapshot is republished every
  ``heartbeat_interval_ms`` with a fresh heartbeat, so readers with any expiry down to
  a few heartbeats keep it.
* **Gone** means: not alive, or a ``CLEAR_USER_SYNC``, or **every Redis connection
  that may carry its lines has closed**. The last one is the death signal: after
  each ``USER_SYNC`` the caller lists Redis's clients and ties the instance to the
  connections that had just published (:meth:`BridgedPresence.publishers_seen`,
  narrowed at every tie); a periodic list (:meth:`BridgedPresence.connections_listed`)
  finds them closed within seconds of the worker's exit, SIGTERM or SIGKILL, while
  Synapse's own writer waits for its timers. An instance whose candidates include a
  process that lives on is not decided this way and keeps the windows below. The
  bridge then removes the instance from the compacted topic (a tombstone), so
  readers drop it at once and compaction forgets the key.
* **Offline.** A ``presence`` row that says ``offline`` removes the user from every
  instance: Synapse no longer counts the user, and neither do we.

The live window must be longer than the longest quiet spell of a live user's
evidence: rows come about every 60 s, each with a ``last_user_sync_ts`` up to ~15 s
old, so 75 s can pass; the default is 120 s. The first row comes only about 2 minutes
after a user starts syncing, which the ``USER_SYNC`` window covers. A worker that dies
therefore leaves the view when its connections are seen closed, or else at the
later of 5 minutes after its last ``USER_SYNC`` (when Synapse's writer stops counting
its syncs too) and 120 s after its users' last sync, or at once when the writer
publishes them offline. Without the connection signal Synapse can be quicker for a
user whose ``USER_SYNC`` is older than 5 minutes (it then goes by the worker's HTTP
relays, 30 s after the last one, which Redis does not carry); docs/presence.md has
the measured times. The rule needs Synapse's presence enabled (its default); without
presence rows an instance lives ``user_sync_window_ms`` past its last ``USER_SYNC``.

Pure: time comes in as ``now_ms``; the caller publishes what the methods return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from adapter.core.redis_clients import ClientList

__all__ = [
    "DEFAULT_BRIDGE_HEARTBEAT_MS",
    "DEFAULT_LIVE_WINDOW_MS",
    "DEFAULT_USER_SYNC_WINDOW_MS",
    "BridgedPresence",
    "Gone",
    "Publish",
]

DEFAULT_LIVE_WINDOW_MS: Final = 120_000
#: Synapse's ``EXTERNAL_PROCESS_EXPIRY``: how long its writer counts a worker's syncs.
DEFAULT_USER_SYNC_WINDOW_MS: Final = 300_000
DEFAULT_BRIDGE_HEARTBEAT_MS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish this snapshot (an instance's whole set, heartbeat now)."""

    snapshot: PresenceSnapshot


@dataclass(frozen=True, slots=True)
class Gone:
    """The instance left: tombstone its key. ``reason`` is for the log."""

    instance_id: str
    reason: str


Action = Publish | Gone


@dataclass(slots=True)
class _Instance:
    # (user, device) -> when the device started syncing (ms)
    devices: dict[tuple[str, str | None], int] = field(default_factory=dict)
    last_command_ms: int = 0
    last_published_ms: int | None = None
    # The Redis connections that may carry its lines (one of them does), and the
    # server run they belong to; None until a USER_SYNC has been tied.
    connections: frozenset[int] | None = None
    redis_run: str = ""


def _device_order(item: tuple[tuple[str, str | None], int]) -> tuple[str, bool, str]:
    (user, device), _since = item
    return (user, device is not None, device or "")


class BridgedPresence:
    """Per instance ID: the syncing set from USER_SYNC, liveness from presence rows.

    Args:
        live_window_ms: how long a presence row's evidence keeps an instance alive.
        user_sync_window_ms: how long a ``USER_SYNC`` keeps its instance alive.
        heartbeat_interval_ms: how often an alive instance's snapshot is republished.
    """

    def __init__(
        self,
        *,
        live_window_ms: int = DEFAULT_LIVE_WINDOW_MS,
        user_sync_window_ms: int = DEFAULT_USER_SYNC_WINDOW_MS,
        heartbeat_interval_ms: int = DEFAULT_BRIDGE_HEARTBEAT_MS,
    ) -> None:
        shortest = min(live_window_ms, user_sync_window_ms)
        if shortest <= heartbeat_interval_ms or heartbeat_interval_ms <= 0:
            raise ValueError("the windows must be longer than a heartbeat interval")
        self._live_window_ms = live_window_ms
        self._user_sync_window_ms = user_sync_window_ms
        self._heartbeat_ms = heartbeat_interval_ms
        self._instances: dict[str, _Instance] = {}
        self._evidence_ms: dict[str, int] = {}
        self._owner: dict[str, str] = {}

    def seed(self, snapshots: Mapping[str, PresenceSnapshot], now_ms: int) -> None:
        """Start from what the presence topic holds (a restarted bridge).

        Each instance gets one live window from ``now_ms`` to show a sign of life;
        one that was already dead is then tombstoned.
        """
        for instance_id, snapshot in snapshots.items():
            instance = _Instance(
                {(d.user_id, d.device_id): d.last_sync_ms for d in snapshot.syncing},
                last_command_ms=now_ms,
                last_published_ms=snapshot.heartbeat_ms,
            )
            self._instances[instance_id] = instance
            for device in snapshot.syncing:
                self._owner.setdefault(device.user_id, instance_id)

    def user_sync(
        self,
        instance_id: str,
        user_id: str,
        device_id: str | None,
        *,
        is_syncing: bool,
        since_ms: int,
        now_ms: int,
    ) -> list[Action]:
        """Apply one ``USER_SYNC``; returns the snapshot to publish."""
        instance = self._instances.setdefault(instance_id, _Instance())
        instance.last_command_ms = now_ms
        if is_syncing:
            instance.devices.setdefault((user_id, device_id), since_ms)
            self._owner[user_id] = instance_id
        else:
            instance.devices.pop((user_id, device_id), None)
        return [self._publish(instance_id, instance, now_ms)]

    def publishers_seen(self, instance_id: str, clients: ClientList) -> None:
        """Tie an instance to the connections that may have carried its ``USER_SYNC``.

        ``clients`` must have been listed after that ``USER_SYNC`` was published
        and within about a second of it (the caller checks), so its
        ``recent_publishers`` hold the instance's publisher. Each tie narrows the
        candidates to those seen every time; a disjoint set means the worker
        reconnected, and replaces them.
        """
        instance = self._instances.get(instance_id)
        if instance is None:
            return
        seen = clients.recent_publishers
        known = instance.connections
        if known is not None and instance.redis_run == clients.server and known & seen:
            instance.connections = known & seen
        else:
            instance.connections = seen or None
            instance.redis_run = clients.server

    def connections_listed(self, clients: ClientList) -> list[Action]:
        """Apply a periodic ``CLIENT LIST``: an instance whose candidates all closed is gone.

        Candidates from another Redis run (a restart, a failover) are forgotten:
        client IDs do not compare across runs; the next ``USER_SYNC`` ties again.
        """
        actions: list[Action] = []
        for instance_id in sorted(self._instances):
            instance = self._instances[instance_id]
            known = instance.connections
            if known is None:
                continue
            if instance.redis_run != clients.server:
                instance.connections = None
                continue
            alive = known & clients.present
            if alive:
                instance.connections = alive
                continue
            del self._instances[instance_id]
            self._disown(instance_id)
            actions.append(Gone(instance_id, "its Redis connections closed"))
        return actions

    def clear(self, instance_id: str) -> list[Action]:
        """Apply a ``CLEAR_USER_SYNC``: the instance is gone."""
        self._instances.pop(instance_id, None)
        self._disown(instance_id)
        return [Gone(instance_id, "cleared")]

    def presence_row(
        self, user_id: str, state: str, last_user_sync_ts: int, now_ms: int
    ) -> list[Action]:
        """Apply a ``presence`` stream row: evidence, or an offline user."""
        if state != "offline":
            # A clock ahead of ours must not buy eternal life: never past now.
            seen = min(last_user_sync_ts, now_ms)
            if seen > self._evidence_ms.get(user_id, 0):
                self._evidence_ms[user_id] = seen
            return []
        actions: list[Action] = []
        for instance_id, instance in self._instances.items():
            devices = [key for key in instance.devices if key[0] == user_id]
            if devices:
                for key in devices:
                    del instance.devices[key]
                actions.append(self._publish(instance_id, instance, now_ms))
        self._owner.pop(user_id, None)
        self._evidence_ms.pop(user_id, None)
        return actions

    def tick(self, now_ms: int) -> list[Action]:
        """Heartbeat the alive instances that are due; say which ones are gone."""
        actions: list[Action] = []
        for instance_id in sorted(self._instances):
            instance = self._instances[instance_id]
            evidence = self._evidence_of(instance_id)
            if (
                now_ms - instance.last_command_ms > self._user_sync_window_ms
                and now_ms - evidence > self._live_window_ms
            ):
                del self._instances[instance_id]
                self._disown(instance_id)
                last_sign = max(instance.last_command_ms, evidence)
                actions.append(
                    Gone(
                        instance_id,
                        f"no sign of life for {(now_ms - last_sign) / 1000:.0f} s",
                    )
                )
            elif (
                instance.last_published_ms is None
                or now_ms - instance.last_published_ms >= self._heartbeat_ms
            ):
                actions.append(self._publish(instance_id, instance, now_ms))
        return actions

    def _evidence_of(self, instance_id: str) -> int:
        """The newest presence-row evidence for a user the instance owns (0: none)."""
        instance = self._instances[instance_id]
        owned = [
            self._evidence_ms.get(user, 0)
            for user, _device in instance.devices
            if self._owner.get(user) == instance_id
        ]
        return max(owned, default=0)

    def instances(self) -> dict[str, frozenset[str]]:
        """Each instance's syncing users (for tests and logs)."""
        return {
            instance_id: frozenset(user for user, _ in instance.devices)
            for instance_id, instance in self._instances.items()
        }

    def _publish(self, instance_id: str, instance: _Instance, now_ms: int) -> Publish:
        instance.last_published_ms = now_ms
        return Publish(
            PresenceSnapshot(
                instance_id=instance_id,
                instance_name="",
                heartbeat_ms=now_ms,
                syncing=tuple(
                    SyncingDevice(user, device, since)
                    for (user, device), since in sorted(
                        instance.devices.items(), key=_device_order
                    )
                ),
            )
        )

    def _disown(self, instance_id: str) -> None:
        for user in [u for u, owner in self._owner.items() if owner == instance_id]:
            del self._owner[user]
