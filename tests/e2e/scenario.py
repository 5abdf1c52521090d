"""The scripted client session that makes a real Synapse write every local stream.

Shared by ``test_synapse_peer.py`` and ``record_lines.py``. Each step waits (with a
deadline) for its replication line before the next one where order matters: typing
"off" right after "on" would otherwise fold into one row, because the typing stream
only ever reports a room's current typing list.

Routing follows a real deployment behind a reverse proxy: ``/sync`` goes to the
worker (so it publishes ``USER_SYNC`` and ``USER_IP``), everything else to the main
process (typing must: pitfall P5).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapter.devstack.services.synapse import MAIN_INSTANCE_NAME, SynapseHomeserver
from tests.e2e.capture import CapturedLine, RedisCapture
from tests.e2e.matrix_client import MatrixClient, SyncLoop

__all__ = ["ScenarioReport", "run_scenario"]

_STEP_TIMEOUT_S = 30.0


@dataclass
class ScenarioReport:
    """What the scenario did, for the assertions that follow.

    Attributes:
        alice: alice's session on the main process (device ``ALICEDEV``).
        bob: bob's session on the main process (device ``BOBDEV``).
        carol: carol, registered with the shared secret.
        room_id: the room alice created and bob joined.
        event_ids: the ``m.room.message`` event IDs, in sending order.
        syncs: how many ``/sync`` requests bob made on the worker.
        elapsed_s: wall time of the whole scenario.
    """

    alice: MatrixClient
    bob: MatrixClient
    carol: MatrixClient
    room_id: str
    event_ids: list[str] = field(default_factory=list)
    syncs: int = 0
    elapsed_s: float = 0.0


def _rdata(stream: str, *needles: str) -> Callable[[CapturedLine], bool]:
    """Match ``RDATA <stream> master ...`` lines whose text holds every needle."""
    prefix = f"RDATA {stream} {MAIN_INSTANCE_NAME} "

    def match(line: CapturedLine) -> bool:
        return line.line.startswith(prefix) and all(n in line.line for n in needles)

    return match


def run_scenario(hs: SynapseHomeserver, capture: RedisCapture) -> ScenarioReport:
    """Drive alice, bob and carol through every locally replicated stream.

    Args:
        hs: a started homeserver; with a worker, bob's ``/sync`` goes there.
        capture: a started capture of ``hs``'s channels, used to pace the steps.

    Returns:
        What was done, with the sessions for further requests.
    """
    started = time.monotonic()
    server = MatrixClient(hs.client_url)
    carol = server.register_with_shared_secret(
        "carol", "pass-carol", hs.registration_shared_secret
    )
    server.register("alice", "pass-alice")
    server.register("bob", "pass-bob")
    # A login with a chosen device ID writes a new device: a device_lists row.
    alice = server.login("alice", "pass-alice", device_id="ALICEDEV")
    bob = server.login("bob", "pass-bob", device_id="BOBDEV")
    assert alice.user_id is not None
    assert bob.user_id is not None
    bob_id = bob.user_id

    sync_client = bob.on(hs.worker_client_url or hs.client_url)
    first = sync_client.sync(timeout_ms=0)
    sync_loop = SyncLoop(sync_client, timeout_ms=1000)
    sync_loop.next_batch = first["next_batch"]
    sync_loop.start()
    try:
        room_id = alice.create_room(name="synkafka e2e", invite=(bob.user_id,))
        bob.join(room_id)
        report = ScenarioReport(alice=alice, bob=bob, carol=carol, room_id=room_id)
        report.event_ids += [
            alice.send_message(room_id, f"hello {i}") for i in range(3)
        ]

        bob.set_typing(room_id, True)
        capture.wait_for(
            _rdata("typing", bob.user_id), timeout_s=_STEP_TIMEOUT_S, what="typing on"
        )
        bob.set_typing(room_id, False)
        capture.wait_for(
            _rdata("typing", f'"{room_id}",[]'),
            timeout_s=_STEP_TIMEOUT_S,
            what="typing off",
        )

        last = report.event_ids[-1]
        bob.send_receipt(room_id, last)
        bob.set_read_markers(room_id, fully_read=last)
        alice.set_presence("online", "synkafka e2e")
        bob.set_presence("unavailable", "away for a bit")

        alice.set_account_data("org.synkafka.e2e", {"answer": 42})
        alice.set_room_tag(room_id, "u.work", order=0.5)
        alice.send_to_device(
            "org.synkafka.e2e.ping", {bob.user_id: {"BOBDEV": {"n": 1}}}
        )
        alice.set_device_display_name("ALICEDEV", "alice's laptop")
        alice.set_displayname("Alice")
        alice.put_push_rule(
            "content", "synkafka", {"pattern": "synkafka", "actions": ["notify"]}
        )
        report.event_ids += [bob.send_message(room_id, f"reply {i}") for i in range(2)]

        # Everything above is on the wire once the last message and the worker's
        # USER_SYNC/USER_IP are.
        capture.wait_for(
            _rdata("events", report.event_ids[-1]),
            timeout_s=_STEP_TIMEOUT_S,
            what="the last message's RDATA",
        )
        capture.wait_for(
            _rdata("push_rules", alice.user_id),
            timeout_s=_STEP_TIMEOUT_S,
            what="RDATA push_rules",
        )
        if hs.with_worker:
            capture.wait_for(
                lambda ln: ln.line.startswith("USER_SYNC ") and bob_id in ln.line,
                timeout_s=_STEP_TIMEOUT_S,
                what="USER_SYNC from the worker",
            )
            capture.wait_for(
                lambda ln: ln.command == "USER_IP",
                timeout_s=_STEP_TIMEOUT_S,
                what="USER_IP from the worker",
            )
    finally:
        sync_loop.stop()
    report.syncs = sync_loop.syncs + 1
    report.elapsed_s = time.monotonic() - started
    return report
