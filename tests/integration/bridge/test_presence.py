"""The bridge's presence: USER_SYNC snapshots, presence rows, the CLIENT LIST probe."""

from __future__ import annotations

import itertools
import json
import logging
import time

import pytest
import redis

from adapter.core import topics
from adapter.core.commands import ClearUserSyncsCommand
from adapter.io.redis import RedisClients
from adapter.runtime import bridge as bridge_module
from tests.integration.bridge_run import (
    BridgeRun,
    decoded,
    publish_lines,
    read_topic,
    wait_records,
)
from tests.integration.harness import wait_for


def test_clear_user_sync_clears_the_instance(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix):
        publish_lines(
            publisher,
            [
                (server_name, "USER_SYNC abcde @a:x DEV start 1000"),
                (server_name, "USER_SYNC abcde @b:x None start 1001"),
                (server_name, "USER_SYNC abcde @a:x DEV end 1002"),
                (server_name, "CLEAR_USER_SYNC abcde"),
            ],
        )
        wait_records(kafka_bootstrap, topics.presence_topic(prefix), 5, "presence")
    records = read_topic(kafka_bootstrap, topics.presence_topic(prefix))
    values = decoded(records[:4])
    assert [len(v.syncing) for v in values[:3]] == [1, 2, 1]
    assert values[2].syncing[0].user_id == "@b:x"
    assert values[3] == ClearUserSyncsCommand("abcde")
    # Nothing else writes tombstones in a bridged deployment: the bridge does.
    assert records[4].key == b"abcde"
    assert records[4].value is None


def tombstone_times(bootstrap: str, topic: str) -> dict[bytes, int]:
    """The timestamp (ms) of each key's tombstone on ``topic``."""
    return {
        r.key: r.timestamp_ms
        for r in read_topic(bootstrap, topic)
        if r.value is None and r.key is not None
    }


def _presence_row(user: str, state: str, last_sync_ms: int, token: int) -> str:
    row = [user, state, last_sync_ms, 0, last_sync_ms, None, state == "online"]
    return f"RDATA presence master {token} {json.dumps(row)}"


def test_presence_rows_keep_a_quiet_instance_alive_and_their_end_removes_it(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    # Windows scaled down 100x from the defaults (120 s, 300 s, 10 s).
    windows = {
        "live_window_ms": 1200,
        "user_sync_window_ms": 3000,
        "heartbeat_interval_ms": 100,
    }
    topic = topics.presence_topic(prefix)
    with BridgeRun(
        redis_url, server_name, kafka_bootstrap, prefix, presence_windows=windows
    ) as run:
        publish_lines(
            publisher,
            [
                (server_name, "USER_SYNC quiet @a:x DEV start 1000"),
                (server_name, "USER_SYNC other @b:x DEV start 1000"),
            ],
        )
        # @a keeps syncing as Synapse shows it: a presence row every 300 ms (scaled
        # from 60 s and halved, so a stalled test thread has slack against the 1.2 s
        # window), with a last_user_sync_ts a little old; nothing on Redis else.
        started = time.monotonic()
        token = 1
        while True:
            last_row_ms = int(time.time() * 1000)
            publish_lines(
                publisher,
                [
                    (
                        server_name,
                        _presence_row("@a:x", "online", last_row_ms - 130, token),
                    )
                ],
            )
            token += 1
            if time.monotonic() - started >= 6.0:  # twice the USER_SYNC window
                break
            run.stop_event.wait(0.3)
        # @b's worker said nothing after its start: gone after the USER_SYNC window.
        records = read_topic(kafka_bootstrap, topic)
        assert [r.key for r in records if r.value is None] == [b"other"]
        # ...while "quiet" was republished at every tick of the bridge (1 s); a
        # skipped tick would leave a gap of 2 s.
        beats = [
            decoded([r])[0].heartbeat_ms
            for r in records
            if r.key == b"quiet" and r.value
        ]
        assert len(beats) >= 5
        assert max(b - a for a, b in itertools.pairwise(beats)) < 1900
        # Its user's rows stop (the worker died): it leaves within the live window.
        wait_for(
            lambda: b"quiet" in tombstone_times(kafka_bootstrap, topic),
            10,
            "the tombstone of the quiet instance",
        )
        gone_ms = tombstone_times(kafka_bootstrap, topic)[b"quiet"]
    # Timed by the tombstone's own timestamp, so slow reads here do not count.
    gone_after_s = (gone_ms - last_row_ms) / 1000
    assert 0.6 < gone_after_s < 1.2 + 1.0 + 0.5  # window, tick, margin


def test_an_offline_presence_row_removes_the_user_at_once(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    publisher: redis.Redis,
) -> None:
    topic = topics.presence_topic(prefix)
    with BridgeRun(redis_url, server_name, kafka_bootstrap, prefix):
        publish_lines(
            publisher,
            [
                (server_name, "USER_SYNC inst1 @a:x DEV start 1000"),
                (server_name, "USER_SYNC inst1 @b:x DEV start 1000"),
                (server_name, _presence_row("@a:x", "offline", 1000, 1)),
            ],
        )
        wait_records(kafka_bootstrap, topic, 3, "three snapshots")
    values = decoded(read_topic(kafka_bootstrap, topic)[:3])
    assert [[d.user_id for d in v.syncing] for v in values] == [
        ["@a:x"],
        ["@a:x", "@b:x"],
        ["@b:x"],
    ]


def test_an_instance_leaves_when_every_connection_that_may_carry_it_closed(
    redis_url: str,
    kafka_bootstrap: str,
    prefix: str,
    server_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The presence probe: ties by CLIENT LIST after each USER_SYNC, then closes.

    Two "workers" publish their USER_SYNC in the same moment, so each instance is
    tied to both connections: closing one decides nothing (the windows, 5 minutes
    here, keep both); closing the other ends both at the next list.
    """
    # Each instance sends one USER_SYNC here, so a tie skipped because the bridge
    # read it late (over 0.5 s, a stall on a loaded machine) would never come again.
    # 1.5 s stays within what CLIENT LIST still shows as a recent publisher (2 s).
    monkeypatch.setattr(bridge_module, "_TIE_WITHIN_S", 1.5)
    topic = topics.presence_topic(prefix)
    worker_a = redis.Redis.from_url(redis_url)
    worker_b = redis.Redis.from_url(redis_url)
    try:
        with BridgeRun(
            redis_url, server_name, kafka_bootstrap, prefix, probe_interval_s=0.2
        ) as run:
            # Both connections exist and have just spoken before either USER_SYNC, so
            # the list after each one holds both, whichever the bridge takes first.
            worker_a.ping()
            worker_b.ping()
            worker_a.publish(server_name, "USER_SYNC instA @a:x DEV start 1000")
            worker_b.publish(server_name, "USER_SYNC instB @b:x DEV start 1000")
            wait_records(kafka_bootstrap, topic, 2, "both snapshots")
            worker_a.close()
            lists = run.bridge.stats.client_lists
            wait_for(
                lambda: run.bridge.stats.client_lists >= lists + 3,
                10,
                "three client lists after the first worker closed",
            )
            records = read_topic(kafka_bootstrap, topic)
            assert [r.key for r in records if r.value is None] == []
            closed_ms = int(time.time() * 1000)
            worker_b.close()
            wait_for(
                lambda: (
                    tombstone_times(kafka_bootstrap, topic).keys()
                    == {b"instA", b"instB"}
                ),
                10,
                "the tombstones of both instances",
            )
            tombstones = tombstone_times(kafka_bootstrap, topic)
    finally:
        worker_a.close()
        worker_b.close()
    # The probe's interval (0.2 s) and its tick, not a window (5 minutes here); timed
    # by the tombstones' own timestamps, so slow reads here do not count.
    assert max(tombstones.values()) - closed_ms < 2500


def test_a_redis_user_without_client_list_turns_the_probe_off_once(
    redis_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis.from_url(redis_url)
    user = f"probe-{unique_name}"
    # What a bridge role limited to replication may run (docs/security.md), and the
    # same with the probe's two commands.
    limited = ["-@all", "+subscribe", "+publish", "+ping", "+client|setname"]
    admin.acl_setuser(user, enabled=True, passwords=["+pw"], commands=limited)
    host = redis_url.split("//", 1)[1]
    try:
        clients = RedisClients(f"redis://{user}:pw@{host}")
        with caplog.at_level(logging.WARNING, logger="adapter.io.redis.clients"):
            assert clients.list() is None
            assert clients.list() is None
        assert not clients.enabled
        assert len(caplog.records) == 1, caplog.text
        assert "time windows alone" in caplog.text
        clients.close()
        admin.acl_setuser(
            user, enabled=True, commands=["+client|list", "+info"], reset=False
        )
        allowed = RedisClients(f"redis://{user}:pw@{host}")
        listed = allowed.list()
        assert listed is not None
        assert listed[0].server
        assert allowed.enabled
        allowed.close()
    finally:
        admin.acl_deluser(user)
        admin.close()
