"""A real Synapse puts every local replication command on Redis, on both engines.

These tests pin what the bridge will receive from Synapse: the two channels,
the startup burst, an RDATA for each stream the scenario writes, the worker's
USER_SYNC and USER_IP, and the engine's spelling of booleans in rows (0/1 on SQLite,
false/true on PostgreSQL, pitfall P6).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import redis

from adapter.core.errors import ServiceError
from adapter.devstack.services._process import is_alive, poll_until
from adapter.devstack.services.synapse import (
    INSTALL_HINT,
    MAIN_INSTANCE_NAME,
    WORKER_NAME,
    SynapseHomeserver,
)
from tests.e2e.capture import CapturedLine, RedisCapture, count_kinds, format_line
from tests.e2e.scenario import ScenarioReport, run_scenario

# Streams the main process announces at every connect (seen against a real Synapse).
_ANNOUNCED = {
    "events",
    "backfill",
    "presence",
    "typing",
    "receipts",
    "push_rules",
    "pushers",
    "caches",
    "device_lists",
    "to_device",
    "account_data",
}
# Streams the scenario writes rows to, all from the main process.
_WRITTEN = {
    "events",
    "receipts",
    "typing",
    "presence",
    "account_data",
    "to_device",
    "device_lists",
    "push_rules",
}


def _run(hs: SynapseHomeserver, capture: RedisCapture) -> list[CapturedLine]:
    report = run_scenario(hs, capture)
    lines = capture.lines()
    print(
        f"\n{hs.database_engine}: main ready {hs.ready_s:.2f} s, worker ready "
        f"{hs.worker_ready_s:.2f} s, scenario {report.elapsed_s:.2f} s, "
        f"{report.syncs} syncs, {len(lines)} lines"
    )
    for kind, count in sorted(count_kinds(lines).items()):
        print(f"  {kind}: {count}")
    _assert_common(hs, report, lines)
    return lines


def _rows(lines: list[CapturedLine], stream: str) -> list[tuple[str, str, Any]]:
    result = []
    for line in lines:
        if line.kind == f"RDATA {stream}":
            _, instance, token, row = line.rdata()
            result.append((instance, token, row))
    return result


def _assert_common(
    hs: SynapseHomeserver, report: ScenarioReport, lines: list[CapturedLine]
) -> None:
    server = hs.server_name
    bob, alice = report.bob.user_id, report.alice.user_id
    assert {ln.channel for ln in lines} == {server, f"{server}/USER_IP"}
    for line in lines:
        assert (line.command == "USER_IP") == line.channel.endswith("/USER_IP"), line

    # Startup burst: REPLICATE (with its trailing space) and POSITIONs per stream.
    assert "REPLICATE " in [ln.line for ln in lines]
    positions = {
        tuple(ln.line.split(" ")[1:3]) for ln in lines if ln.command == "POSITION"
    }
    assert {(stream, MAIN_INSTANCE_NAME) for stream in _ANNOUNCED} <= positions
    assert ("caches", WORKER_NAME) in positions

    kinds = count_kinds(lines)
    for stream in _WRITTEN:
        assert kinds[f"RDATA {stream}"] >= 1, stream
        assert {row[0] for row in _rows(lines, stream)} == {MAIN_INSTANCE_NAME}
    assert kinds["LOCK_RELEASED"] >= 1

    events = "\n".join(ln.line for ln in lines if ln.kind == "RDATA events")
    for event_id in report.event_ids:
        assert json.dumps(event_id) in events
    typing = [row for _, _, row in _rows(lines, "typing")]
    assert [report.room_id, [bob]] in typing
    assert [report.room_id, []] in typing
    receipts = [row for _, _, row in _rows(lines, "receipts")]
    assert any(row[2] == bob and row[1] == "m.read" for row in receipts)
    account_data = [row for _, _, row in _rows(lines, "account_data")]
    assert [alice, None, "org.synkafka.e2e"] in account_data
    assert [alice, report.room_id, "m.tag"] in account_data
    assert [bob, report.room_id, "m.fully_read"] in account_data
    assert [bob] in [row for _, _, row in _rows(lines, "to_device")]
    assert [alice] in [row for _, _, row in _rows(lines, "push_rules")]
    presence = {row[0]: row for _, _, row in _rows(lines, "presence")}
    assert presence[alice][5] == "synkafka e2e"
    assert {alice, bob} <= {row[0] for _, _, row in _rows(lines, "device_lists")}

    # The worker's commands: USER_SYNC on the main channel, USER_IP on its own.
    user_syncs = [ln.line.split(" ") for ln in lines if ln.command == "USER_SYNC"]
    assert [bob, "BOBDEV", "start"] in [fields[2:5] for fields in user_syncs]
    instance_ids = {fields[1] for fields in user_syncs}
    assert WORKER_NAME not in instance_ids  # a random per-process id, not the name
    user_ips = [ln for ln in lines if ln.command == "USER_IP"]
    _, user_id, payload = user_ips[0].line.split(" ", 2)
    token, ip, user_agent, device_id, last_seen = json.loads(payload)
    assert (user_id, ip, user_agent, device_id) == (
        bob,
        "127.0.0.1",
        "synkafka-e2e/1",
        "BOBDEV",
    )
    assert token == report.bob.access_token
    assert isinstance(last_seen, int)
    # The recorded form masks the live token with a fake of the same shape.
    recorded = format_line(user_ips[0])
    assert token not in recorded
    fake = json.loads(recorded.split(" ", 2)[2])[0]
    assert fake.startswith("syt_masked_")
    assert [len(p) for p in fake.split("_")[-2:]] == [
        len(p) for p in token.split("_")[-2:]
    ]


def _ev_flags(lines: list[CapturedLine]) -> list[list[Any]]:
    """The ``rejected, outlier`` pair of every ``ev`` row."""
    return [row[1][7:] for _, _, row in _rows(lines, "events") if row[0] == "ev"]


def test_sqlite_peer_publishes_every_local_stream_with_integer_booleans(
    synapse_sqlite: SynapseHomeserver, redis_capture: RedisCapture
) -> None:
    lines = _run(synapse_sqlite, redis_capture)
    flags = _ev_flags(lines)
    assert flags
    assert all(flag == [0, 0] and type(flag[0]) is int for flag in flags)
    assert ("POSITION caches master 0 0") in [ln.line for ln in lines]
    assert "RDATA caches" not in count_kinds(lines)
    assert synapse_sqlite.sqlite_path is not None
    assert synapse_sqlite.sqlite_path.is_file()


def test_postgres_peer_publishes_every_local_stream_with_json_booleans(
    synapse_pg: SynapseHomeserver, redis_capture: RedisCapture
) -> None:
    lines = _run(synapse_pg, redis_capture)
    flags = _ev_flags(lines)
    assert flags
    assert all(flag == [False, False] and type(flag[0]) is bool for flag in flags)
    # Only PostgreSQL has the caches stream table: its invalidations are replicated.
    caches = _rows(lines, "caches")
    assert caches
    assert all(isinstance(row[2], int) for _, _, row in caches)
    device_lists = [row for _, _, row in _rows(lines, "device_lists")]
    assert all(type(row[2]) is bool for row in device_lists)


def test_homeserver_restarts_and_resubscribes(
    redis_url: str, synapse_server_name: str, redis_capture: RedisCapture
) -> None:
    with SynapseHomeserver(redis_url, server_name=synapse_server_name) as hs:
        assert hs.subscriber_count() == 2  # the capture and the main process
        pid = hs.pid
        hs.restart()
        assert hs.pid != pid
        assert hs.subscriber_count() == 2
        # The restarted process subscribes before it sends its REPLICATE: wait for
        # the second one rather than count at once.
        first = redis_capture.wait_for(
            lambda ln: ln.line == "REPLICATE ", what="the first REPLICATE"
        )
        redis_capture.wait_for(
            lambda ln: ln.line == "REPLICATE ",
            what="the restarted process's REPLICATE",
            after=redis_capture.lines().index(first) + 1,
        )
        replicates = [ln for ln in redis_capture.lines() if ln.line == "REPLICATE "]
        assert len(replicates) == 2
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.pubsub_numsub(synapse_server_name)[0][1] == 1
    finally:
        client.close()


def test_missing_synapse_fails_with_the_install_command(tmp_path: Path) -> None:
    # An interpreter without site-packages cannot find Synapse.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(
        ServiceError, match=r"synapse, txredisapi not importable"
    ) as exc:
        SynapseHomeserver("redis://127.0.0.1:6379/0", python=os.fspath(python))
    assert INSTALL_HINT in str(exc.value)


_CHILD = """
import sys
from adapter.devstack.services.synapse import SynapseHomeserver
hs = SynapseHomeserver(sys.argv[1], server_name=sys.argv[2], with_worker=True)
hs.start()
print(hs.pid, hs.worker_pid, flush=True)
sys.stdin.read()
"""


def test_synapse_dies_when_its_parent_is_killed(
    redis_url: str, synapse_server_name: str
) -> None:
    # A SIGKILLed parent cannot remove its run folder: give it a scratch TMPDIR.
    scratch = Path(tempfile.mkdtemp(prefix="synkafka-orphan-"))
    repo = Path(__file__).resolve().parents[2]
    try:
        with subprocess.Popen(
            [sys.executable, "-c", _CHILD, redis_url, synapse_server_name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=repo,
            env={**os.environ, "TMPDIR": str(scratch)},
        ) as parent:
            assert parent.stdout is not None
            try:
                pids = [int(p) for p in parent.stdout.readline().split()]
                assert len(pids) == 2, "the child did not start Synapse"
                assert all(is_alive(pid) for pid in pids)
            finally:
                parent.kill()  # SIGKILL: no atexit, no finalizers, only the kernel
            parent.wait(timeout=10)
        poll_until(
            lambda: True if not any(is_alive(pid) for pid in pids) else None,
            timeout_s=15,
            what="Synapse's main and worker processes exiting",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
