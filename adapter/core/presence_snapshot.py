"""Presence snapshots: the record values synkafka adds to Synapse's replication commands.

Synapse's presence protocol is edge-triggered (``USER_SYNC start|end``), which makes
the presence writer expire busy but quiet workers (element-hq/synapse#16771). On Kafka
each instance instead publishes its *whole* syncing set, keyed by its instance ID, on a
compacted topic: the latest record per key is the truth, and a heartbeat time in it
lets the reader tell a quiet instance from a dead one.

The clear (``CLEAR_USER_SYNC``) travels on the same topic as a
:class:`~adapter.core.commands.ClearUserSyncsCommand`; a null value (tombstone) deletes the
key during compaction. This module holds values only; it does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PresenceSnapshot", "SyncingDevice"]


@dataclass(frozen=True, slots=True)
class SyncingDevice:
    """One (user, device) that is syncing on an instance.

    Attributes:
        user_id: the Matrix user ID, for example ``@bob:example.com``.
        device_id: the device, or ``None`` when the sync named no device.
        last_sync_ms: when this device's current sync streak started or was last seen,
            in milliseconds since the epoch.
    """

    user_id: str
    device_id: str | None
    last_sync_ms: int


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """An instance's whole syncing set at ``heartbeat_ms``.

    Attributes:
        instance_id: the random per-process-start ID (Synapse's ``instance_id``).
        instance_name: the worker name, for humans (``master``, ``synchrotron1``).
        heartbeat_ms: when the instance published this, in ms since the epoch. A reader
            treats the instance as dead once this is older than the expiry.
        syncing: every (user, device) syncing there now, sorted by (user, device).
    """

    instance_id: str
    instance_name: str
    heartbeat_ms: int
    syncing: tuple[SyncingDevice, ...]
