"""The presence death signal: Redis connections tied to an instance, seen closed.

The client lists follow what Redis 7 showed of a real sharded Synapse 1.163: two
connections per process without a name (a publisher with ``sub=0`` and a subscriber
with ``sub=1``, ``sub=2`` for main), Synapse's PING on each every 30 s, and both
gone within 20 ms of a SIGKILL or SIGTERM (docs/presence.md).
"""

from __future__ import annotations

from adapter.core.bridged_presence import BridgedPresence, Gone, Publish
from adapter.core.redis_clients import ClientList, read_client_list

S = 1000
ALICE, BOB = "@alice:hs", "@bob:hs"
RUN = "run-1"


def _client(
    client_id: int, *, idle: int = 0, sub: int = 0, name: str = ""
) -> dict[str, str]:
    return {
        "id": str(client_id),
        "name": name,
        "idle": str(idle),
        "sub": str(sub),
        "psub": "0",
        "ssub": "0",
        "flags": "P" if sub else "N",
        "cmd": "subscribe" if sub else "publish",
    }


def _listed(
    *recent: int, present: set[int] | None = None, run: str = RUN
) -> ClientList:
    """A list where ``recent`` just published; ``present`` adds quiet connections."""
    ids = frozenset(recent) | frozenset(present or ())
    return ClientList(run, ids, frozenset(recent))


def _gone(actions: list[Publish | Gone]) -> list[str]:
    return [a.instance_id for a in actions if isinstance(a, Gone)]


def _sync(presence: BridgedPresence, instance: str, user: str, now_ms: int) -> None:
    presence.user_sync(
        instance, user, "D", is_syncing=True, since_ms=now_ms, now_ms=now_ms
    )


def test_a_client_list_keeps_recent_publishers_only() -> None:
    entries = [
        _client(5, idle=0),  # main's publisher, just published
        _client(6, idle=0, sub=2),  # main's subscriber: never a publisher
        _client(8, idle=3),  # a persister's publisher, quiet for 3 s
        _client(12, idle=2),  # sync1's publisher, within the margin
        _client(15, idle=0, name="synkafka-bridge-probe"),  # ours
        {"id": "x", "idle": "0"},  # unreadable: skipped
        {"id": "20", "idle": "?", "sub": "0"},  # present, never a candidate
    ]
    listed = read_client_list("r", entries)
    assert listed.server == "r"
    assert listed.present == {5, 6, 8, 12, 15, 20}
    assert listed.recent_publishers == {5, 12}


def test_a_killed_worker_leaves_at_the_first_list_without_its_connection() -> None:
    presence = BridgedPresence()
    _sync(presence, "W1", ALICE, 0)
    # main (5) reacted within the same second: both are candidates.
    presence.publishers_seen("W1", _listed(5, 12))
    assert (
        presence.connections_listed(
            _listed(present={5, 8, 12}),
        )
        == []
    )
    # sync1 (12) is gone; main (5) lives on: not decided, the windows keep W1.
    assert presence.connections_listed(_listed(present={5, 8})) == []
    assert presence.instances() == {"W1": frozenset({ALICE})}
    # A later USER_SYNC of W1 in a quiet moment narrows the tie to sync1's new
    # connection alone (the old candidates are gone: replaced, not intersected).
    presence.publishers_seen("W1", _listed(13, present={5, 8}))
    assert _gone(presence.connections_listed(_listed(present={5, 8}))) == ["W1"]
    assert presence.instances() == {}


def test_ties_narrow_to_the_connections_seen_every_time() -> None:
    presence = BridgedPresence()
    _sync(presence, "W1", ALICE, 0)
    presence.publishers_seen("W1", _listed(5, 8, 12))  # busy: everyone published
    presence.publishers_seen("W1", _listed(8, 12))  # main was quiet
    presence.publishers_seen("W1", _listed(5, 12))  # the persister was quiet
    # Closing the persister's or main's connection decides nothing now.
    assert presence.connections_listed(_listed(present={12})) == []
    assert _gone(presence.connections_listed(_listed(present={5, 8}))) == ["W1"]


def test_another_process_dying_never_removes_a_live_instance() -> None:
    presence = BridgedPresence()
    _sync(presence, "W1", ALICE, 0)
    _sync(presence, "W2", BOB, 0)
    presence.publishers_seen("W1", _listed(5, 12))
    presence.publishers_seen("W2", _listed(5, 20))
    # main (5) and W2's process (20) die; W1's connection 12 is still there.
    assert _gone(presence.connections_listed(_listed(present={12}))) == ["W2"]
    assert presence.instances() == {"W1": frozenset({ALICE})}
    assert presence.connections_listed(_listed(present={12})) == []


def test_a_new_redis_run_forgets_the_ties_instead_of_dropping_everyone() -> None:
    presence = BridgedPresence()
    _sync(presence, "W1", ALICE, 0)
    presence.publishers_seen("W1", _listed(12))
    # Redis restarted: client IDs count from 1 again, 12 is nowhere.
    assert presence.connections_listed(_listed(present={3, 4}, run="run-2")) == []
    assert presence.connections_listed(_listed(present={3, 4}, run="run-2")) == []
    assert presence.instances() == {"W1": frozenset({ALICE})}
    # The worker re-announces its users after its reconnect: tied again.
    presence.publishers_seen("W1", _listed(4, run="run-2"))
    assert _gone(presence.connections_listed(_listed(present={3}, run="run-2"))) == [
        "W1"
    ]


def test_untied_and_unknown_instances_are_left_to_the_windows() -> None:
    presence = BridgedPresence()
    presence.publishers_seen("nobody", _listed(12))  # never announced: ignored
    _sync(presence, "W1", ALICE, 0)
    presence.publishers_seen("W1", _listed())  # nothing recent: no tie
    assert presence.connections_listed(_listed(present=set())) == []
    assert presence.instances() == {"W1": frozenset({ALICE})}
    # ... and the windows still end it, 5 minutes after the USER_SYNC.
    assert _gone(presence.tick(5 * 60 * S + 1)) == ["W1"]


def test_a_gone_instance_loses_its_users_and_a_restart_takes_them() -> None:
    presence = BridgedPresence()
    _sync(presence, "W1", ALICE, 0)
    presence.publishers_seen("W1", _listed(12))
    assert _gone(presence.connections_listed(_listed(present={5}))) == ["W1"]
    # The restarted worker announces ALICE under a new ID; W1 never comes back.
    _sync(presence, "W9", ALICE, 10 * S)
    assert presence.instances() == {"W9": frozenset({ALICE})}
    assert presence.tick(11 * S) == []
