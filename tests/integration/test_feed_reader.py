"""`synkafka feed-consume` against the real broker: a group that shares the feed.

Members run as their own processes (as deployed); the handlers in
``tests/integration/handlers.py`` log each event they handled to a file per member,
so a SIGKILLed member's work up to its death stays readable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Message
from confluent_kafka import Producer as KafkaProducer

from adapter.codec.avro_codec import encode
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.feed import FeedEvent, feed_event_to_json
from adapter.io.kafka.admin import Admin
from tests.integration.harness import (
    dead_letter_records,
    ensure_topics,
    json_lines,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6
ROOMS = [f"!room{n}:test" for n in range(24)]


def _event(n: int, room: str, body: str) -> FeedEvent:
    content = json.dumps({"type": "m.room.message", "content": {"body": body}})
    return FeedEvent(
        event_id=f"$e{n}",
        room_id=room,
        type="m.room.message",
        state_key=None,
        sender="@u:test",
        origin_server_ts=1_700_000_000_000 + n,
        stream_ordering=n + 1,
        instance_name="persister1",
        outlier=False,
        rejected=False,
        rejection_reason=None,
        redacts=None,
        format_version=3,
        json=content,
    )


def _feed_topic(bootstrap: str, prefix: str) -> str:
    ensure_topics(bootstrap, prefix, [])  # the dead-letter topic
    spec = topics.feed_topic_spec(prefix, partitions=PARTITIONS)
    Admin(KafkaSettings(bootstrap_servers=bootstrap)).create_topics([spec])
    return spec.name


def _produce(
    bootstrap: str, topic: str, events: list[FeedEvent], value_format: str = "avro"
) -> dict[str, tuple[int, int]]:
    """Put ``events`` on the feed as ``synkafka feed`` does; (partition, offset) of each."""
    # Idempotent, as the feed's own producer: a retried batch (the topic was just
    # created) can then neither reorder a room's events nor write one twice.
    producer = KafkaProducer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    placed: dict[str, tuple[int, int]] = {}

    def delivered(event_id: str) -> Callable[[object, Message], None]:
        def report(err: object, msg: Message) -> None:
            assert err is None, err
            placed[event_id] = (msg.partition() or 0, msg.offset() or 0)

        return report

    for event in events:
        if value_format == "json":
            value = json.dumps(feed_event_to_json(event)).encode()
        else:
            value = encode(event)
        producer.produce(
            topic,
            value,
            event.room_id.encode(),
            headers=[("synkafka.format", value_format.encode())],
            on_delivery=delivered(event.event_id),
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    last: dict[str, tuple[int, int]] = {}
    for event in events:  # the order the readers must keep, per room
        assert last.get(event.room_id, (-1, -1)) < placed[event.event_id]
        last[event.room_id] = placed[event.event_id]
    return placed


def _member(
    bootstrap: str,
    prefix: str,
    group: str,
    log: Path,
    *extra: str,
    handler: str = "tests.integration.handlers:feed_log",
    delay: str = "0.01",
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FEED_TEST_LOG": str(log), "FEED_TEST_DELAY": delay}
    with log.with_suffix(".stderr").open("ab") as stderr:
        return subprocess.Popen(
            [
                sys.executable, "-m", "adapter", "feed-consume",
                "--bootstrap-servers", bootstrap, "--prefix", prefix,
                "--group", group, "--handler", handler, "--metrics-port", "-1",
                "--session-timeout", "6", "--commit-interval", "0.2", *extra,
            ],
            stderr=stderr,
            env=env,
        )  # fmt: skip


def _committed(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    offsets = Admin(KafkaSettings(bootstrap_servers=bootstrap)).group_offsets(group_id)
    return {p: o for (t, p), (o, _) in offsets.items() if t == topic}


def test_three_members_share_the_feed_and_survive_a_sigkill(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    topic = _feed_topic(kafka_bootstrap, prefix)
    group_id = topics.feed_reader_group(prefix, "g")
    logs = [tmp_path / f"member{n}.jsonl" for n in range(3)]
    members = [
        _member(kafka_bootstrap, prefix, "g", log, "--concurrency", "2") for log in logs
    ]
    victim = members[1]
    try:
        # The events come once every member holds partitions: a member slow to start
        # on a loaded machine must not find the work done by the others already.
        wait_for(
            lambda: all(
                b"assigned partitions" in log.with_suffix(".stderr").read_bytes()
                for log in logs
            ),
            timeout_s=60,
            what="every member in the group",
        )
        events = [_event(n, ROOMS[n % len(ROOMS)], f"message {n}") for n in range(2400)]
        placed = _produce(kafka_bootstrap, topic, events)
        heads: dict[int, int] = defaultdict(int)
        for partition, offset in placed.values():
            heads[partition] = max(heads[partition], offset + 1)
        at: dict[tuple[int, int], str] = {w: e for e, w in placed.items()}
        # All three in the group and working: kill one of them mid-run.
        wait_for(
            lambda: all(len(json_lines(log)) >= 20 for log in logs),
            timeout_s=30,
            what="every member handling events",
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        committed_at_kill = _committed(kafka_bootstrap, group_id, topic)
        handled_at_kill = {line["event_id"] for log in logs for line in json_lines(log)}
        assert len(handled_at_kill) < len(events), "the run ended before the kill"

        # The others take the dead member's partitions after its session timeout.
        def all_handled() -> bool:
            done = {line["event_id"] for log in logs for line in json_lines(log)}
            return len(done) == len(events)

        wait_for(all_handled, timeout_s=40, what="every event handled")
        wait_for(
            lambda: _committed(kafka_bootstrap, group_id, topic) == dict(heads),
            timeout_s=10,
            what="commits up to the head",
        )
        lag = subprocess.run(
            [
                sys.executable, "-m", "adapter", "lag",
                "--bootstrap-servers", kafka_bootstrap, "--prefix", prefix,
                "--group", group_id, "--json",
            ],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
    finally:
        for member in members:
            if member.poll() is None:
                member.send_signal(signal.SIGTERM)
        for member in members:
            member.wait(30)

    for n, member in enumerate(members):
        if member is not victim:
            stderr = logs[n].with_suffix(".stderr").read_text()
            assert member.returncode == 0, stderr[-2000:]
            assert "feed reader stopped: " in stderr
    # Committed offsets never passed an event nobody had handled yet.
    for partition, offset in committed_at_kill.items():
        below = [at[(partition, o)] for o in range(offset) if (partition, o) in at]
        assert set(below) <= handled_at_kill, f"partition {partition} committed early"
    # Nothing lost: every event handled at least once, by someone.
    lines = [(n, line) for n, log in enumerate(logs) for line in json_lines(log)]
    assert {line["event_id"] for _, line in lines} == {e.event_id for e in events}
    # Each member handled each room's events in feed order.
    for n in range(3):
        per_room: dict[str, list[int]] = defaultdict(list)
        for m, line in lines:
            if m == n:
                per_room[line["room_id"]].append(line["stream_ordering"])
        for room, orderings in per_room.items():
            assert orderings == sorted(set(orderings)), f"member {n}: {room}"
    # The survivors took over rooms the victim had been handling.
    victim_rooms = {line["room_id"] for m, line in lines if m == 1}
    survivor_rooms = {line["room_id"] for m, line in lines if m != 1}
    assert victim_rooms & survivor_rooms, "no room moved from the killed member"
    rows = [json.loads(x) for x in lag.stdout.splitlines()]
    assert {r["topic"] for r in rows} == {topic}
    assert sorted(r["partition"] for r in rows) == list(range(PARTITIONS))
    assert all(r["stream"] == "feed" and r["lag_messages"] == 0 for r in rows)


def test_async_handler_dead_letters_what_keeps_failing(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    topic = _feed_topic(kafka_bootstrap, prefix)
    events = [
        _event(n, ROOMS[n % 4], "poison" if n == 7 else f"message {n}")
        for n in range(40)
    ]
    _produce(kafka_bootstrap, topic, events, value_format="json")
    producer = KafkaProducer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"\x00not a feed event", ROOMS[0].encode())
    assert producer.flush(10) == 0
    log = tmp_path / "member.jsonl"
    member = _member(
        kafka_bootstrap, prefix, "async", log,
        "--on-handler-error", "dead-letter", "--handler-retries", "2",
        handler="tests.integration.handlers:feed_log_async", delay="0.001",
    )  # fmt: skip
    try:
        wait_for(
            lambda: len(json_lines(log)) >= 39, timeout_s=30, what="39 events handled"
        )
        letters = dead_letter_records(kafka_bootstrap, prefix, 2)
        group_id = topics.feed_reader_group(prefix, "async")
        wait_for(
            lambda: sum(_committed(kafka_bootstrap, group_id, topic).values()) == 41,
            timeout_s=10,
            what="commits past the dead letters",
        )
    finally:
        member.send_signal(signal.SIGTERM)
        member.wait(30)
    stderr = log.with_suffix(".stderr").read_text()
    assert member.returncode == 0, stderr[-2000:]
    handled = [line["event_id"] for line in json_lines(log)]
    assert sorted(handled) == sorted(e.event_id for e in events if e.event_id != "$e7")
    reasons = sorted(h[topics.HEADER_DLQ_REASON].decode() for _, h in letters)
    assert reasons[0].startswith("decode:"), reasons
    assert reasons[1].startswith("handler failed 2 times: RuntimeError"), reasons
    poisoned = next(v for v, h in letters if b"handler" in h[topics.HEADER_DLQ_REASON])
    assert json.loads(poisoned or b"")["event_id"] == "$e7"


def test_a_handler_that_keeps_failing_stops_the_member_before_its_event(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    topic = _feed_topic(kafka_bootstrap, prefix)
    events = [
        _event(n, "!one:test", "poison" if n == 5 else f"message {n}")
        for n in range(10)
    ]
    placed = _produce(kafka_bootstrap, topic, events)
    log = tmp_path / "member.jsonl"
    member = _member(
        kafka_bootstrap, prefix, "stop", log, "--handler-retries", "2", delay="0"
    )
    member.wait(60)
    stderr = log.with_suffix(".stderr").read_text()
    assert member.returncode == 1, stderr[-2000:]
    assert "handler failed 2 times" in stderr.splitlines()[-1]
    # The room stopped at the poison event: nothing after it ran, nothing past it
    # was committed.
    assert [line["event_id"] for line in json_lines(log)] == [
        f"$e{n}" for n in range(5)
    ]
    partition, offset = placed["$e5"]
    committed = _committed(
        kafka_bootstrap, topics.feed_reader_group(prefix, "stop"), topic
    )
    assert committed.get(partition, 0) <= offset
