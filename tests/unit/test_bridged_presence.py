"""Presence of a bridged Synapse (adapter/core/bridged_presence.py), as transcripts.

The timings follow what a real Synapse 1.163 sends: one ``USER_SYNC start`` when a
user starts syncing and nothing more while they long-poll; a ``presence`` row about
every 60 s per syncing user, whose ``last_user_sync_ts`` is 3 to 13 s old; nothing at
all from a worker that was killed.
"""

from __future__ import annotations

import itertools

import pytest

from adapter.core.bridged_presence import (
    DEFAULT_BRIDGE_HEARTBEAT_MS,
    DEFAULT_LIVE_WINDOW_MS,
    DEFAULT_USER_SYNC_WINDOW_MS,
    BridgedPresence,
    Gone,
    Publish,
)
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice

S = 1000
MINUTE = 60 * S
ALICE, BOB = "@alice:hs", "@bob:hs"


def _users(actions: list[Publish | Gone]) -> list[tuple[str, tuple[str, ...]] | str]:
    """Publish -> (instance, users); Gone -> 'gone <instance>'."""
    out: list[tuple[str, tuple[str, ...]] | str] = []
    for action in actions:
        if isinstance(action, Publish):
            users = tuple(d.user_id for d in action.snapshot.syncing)
            out.append((action.snapshot.instance_id, users))
        else:
            out.append(f"gone {action.instance_id}")
    return out


def _long_poll_rows(
    presence: BridgedPresence, user: str, start_ms: int, until_ms: int
) -> list[Publish | Gone]:
    """A user syncing without a break: a row every 60 s, 13 s old; ticks every 1 s."""
    actions: list[Publish | Gone] = []
    for now in range(start_ms, until_ms, S):
        if (now - start_ms) % MINUTE == 0 and now > start_ms:
            actions += presence.presence_row(user, "online", now - 13 * S, now)
        actions += presence.tick(now)
    return actions


def test_a_user_long_polling_for_12_minutes_never_leaves() -> None:
    presence = BridgedPresence()
    assert _users(
        presence.user_sync("W1", ALICE, "D", is_syncing=True, since_ms=0, now_ms=0)
    ) == [("W1", (ALICE,))]
    actions = _long_poll_rows(presence, ALICE, 0, 12 * MINUTE)
    assert not [a for a in actions if isinstance(a, Gone)]
    heartbeats = [a.snapshot.heartbeat_ms for a in actions if isinstance(a, Publish)]
    # A snapshot every heartbeat interval: readers with a 30 s expiry keep it.
    gaps = [b - a for a, b in itertools.pairwise(heartbeats)]
    assert max(gaps) <= DEFAULT_BRIDGE_HEARTBEAT_MS
    assert presence.instances() == {"W1": frozenset({ALICE})}


def test_without_presence_rows_the_instance_lives_as_long_as_synapse_counts_it() -> (
    None
):
    # Synapse's writer counts a worker's syncs for 5 minutes after its USER_SYNC.
    presence = BridgedPresence()
    presence.user_sync("W1", ALICE, "D", is_syncing=True, since_ms=0, now_ms=0)
    assert _users(presence.tick(DEFAULT_USER_SYNC_WINDOW_MS)) == [("W1", (ALICE,))]
    assert _users(presence.tick(DEFAULT_USER_SYNC_WINDOW_MS + 1)) == ["gone W1"]
    assert presence.instances() == {}


def test_a_killed_worker_leaves_within_the_window_after_its_users_last_sync() -> None:
    presence = BridgedPresence()
    presence.user_sync("W1", ALICE, "D", is_syncing=True, since_ms=0, now_ms=0)
    _long_poll_rows(presence, ALICE, 0, 7 * MINUTE)
    killed = 7 * MINUTE
    # The writer's next row freezes last_user_sync_ts at the last relay.
    presence.presence_row(ALICE, "online", killed - 5 * S, killed + 50 * S)
    gone_at = None
    for now in range(killed, killed + 5 * MINUTE, S):
        if any(isinstance(a, Gone) for a in presence.tick(now)):
            gone_at = now
            break
    assert gone_at is not None
    assert gone_at - (killed - 5 * S) == DEFAULT_LIVE_WINDOW_MS + S


def test_an_offline_row_removes_the_user_at_once() -> None:
    presence = BridgedPresence()
    presence.user_sync("W1", ALICE, "D", is_syncing=True, since_ms=0, now_ms=0)
    presence.user_sync("W1", BOB, None, is_syncing=True, since_ms=0, now_ms=0)
    assert _users(presence.presence_row(ALICE, "offline", 1 * S, 2 * S)) == [
        ("W1", (BOB,))
    ]
    assert presence.instances() == {"W1": frozenset({BOB})}


def test_a_clear_makes_the_instance_gone() -> None:
    presence = BridgedPresence()
    presence.user_sync("W1", ALICE, "D", is_syncing=True, since_ms=0, now_ms=0)
    assert _users(presence.clear("W1")) == ["gone W1"]
    assert presence.instances() == {}
    assert presence.tick(MINUTE) == []


def test_a_restarted_worker_does_not_keep_its_old_instance_alive() -> None:
    # Same user, re-announced by the worker's new instance ID; rows keep coming.
    presence = BridgedPresence()
    presence.user_sync("OLD", ALICE, "D", is_syncing=True, since_ms=0, now_ms=0)
    presence.user_sync("NEW", ALICE, "D", is_syncing=True, since_ms=0, now_ms=30 * S)
    actions = _long_poll_rows(presence, ALICE, 30 * S, 30 * S + 5 * MINUTE)
    gone = [a.instance_id for a in actions if isinstance(a, Gone)]
    assert gone == ["OLD"]
    assert presence.instances() == {"NEW": frozenset({ALICE})}


def test_a_sync_end_empties_the_set_and_the_quiet_instance_then_leaves() -> None:
    presence = BridgedPresence()
    presence.user_sync("W1", ALICE, "D", is_syncing=True, since_ms=0, now_ms=0)
    assert _users(
        presence.user_sync("W1", ALICE, "D", is_syncing=False, since_ms=0, now_ms=S)
    ) == [("W1", ())]
    assert _users(presence.tick(S + DEFAULT_USER_SYNC_WINDOW_MS + 1)) == ["gone W1"]


def test_a_row_from_a_clock_ahead_buys_no_extra_life() -> None:
    presence = BridgedPresence()
    presence.user_sync("W1", ALICE, "D", is_syncing=True, since_ms=0, now_ms=0)
    presence.presence_row(ALICE, "online", 60 * MINUTE, S)  # an hour ahead
    assert _users(presence.tick(DEFAULT_USER_SYNC_WINDOW_MS + 1)) == ["gone W1"]


def test_seeded_instances_get_one_user_sync_window_to_show_life() -> None:
    presence = BridgedPresence()
    seeded = {
        name: PresenceSnapshot(name, "", 0, (SyncingDevice(user, "D", 0),))
        for name, user in (("LIVE", ALICE), ("DEAD", BOB))
    }
    start = 10 * MINUTE
    presence.seed(seeded, now_ms=start)
    assert sorted(_users(presence.tick(start)), key=str) == [
        ("DEAD", (BOB,)),
        ("LIVE", (ALICE,)),
    ]
    evidence = start + 4 * MINUTE
    presence.presence_row(ALICE, "online", evidence, evidence + 10 * S)
    assert _users(presence.tick(start + DEFAULT_USER_SYNC_WINDOW_MS + 1)) == [
        "gone DEAD",
        ("LIVE", (ALICE,)),
    ]
    assert _users(presence.tick(evidence + DEFAULT_LIVE_WINDOW_MS)) == [
        ("LIVE", (ALICE,))
    ]
    assert _users(presence.tick(evidence + DEFAULT_LIVE_WINDOW_MS + 1)) == ["gone LIVE"]


def test_the_window_must_be_longer_than_a_heartbeat() -> None:
    with pytest.raises(ValueError, match="longer than a heartbeat"):
        BridgedPresence(live_window_ms=10, heartbeat_interval_ms=10)
    with pytest.raises(ValueError, match="longer than a heartbeat"):
        BridgedPresence(user_sync_window_ms=10, heartbeat_interval_ms=10)
