"""Presence view: rebuild time from the compacted topic, and records/s it can follow.

Writes one snapshot per instance (``--instances`` x ``--users`` syncing devices each:
what a compacted presence topic holds), then:

* **rebuild**: a new :class:`PresenceFollower` replays the topic to its pinned high
  watermark (``--repeat`` times, fresh consumer each); baselines in the same run: a
  bare read of the same records (fetch only) and bare decoding of their values.
* **follow**: with the follower replayed, ``--follow-records`` more snapshots (the
  same instances heartbeating) are produced first, then timed while the follower
  applies them: the rate it can sustain.

Usage::

    .venv/bin/python -m bench.presence                 # starts its own Kafka
    .venv/bin/python -m bench.presence --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from adapter.codec.avro_codec import decode, encode
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from adapter.devstack.services import KafkaBroker
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import BEGINNING, Consumer, PartitionStart
from adapter.io.kafka.producer import Producer
from adapter.runtime.presence_follower import PresenceFollower
from adapter.runtime.presence_sync import wall_clock_ms
from adapter.runtime.publisher import Publisher


@contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with KafkaBroker(heap_mb=1024) as local:
        yield local.bootstrap_servers


def snapshot(instance: int, users: int, heartbeat_ms: int) -> PresenceSnapshot:
    devices = tuple(
        SyncingDevice(
            f"@user{instance}_{u}:bench.example.com", f"DEV{u:04d}", heartbeat_ms
        )
        for u in range(users)
    )
    return PresenceSnapshot(
        f"inst{instance:06d}", f"synchrotron{instance % 16}", heartbeat_ms, devices
    )


def publish_round(publisher: Publisher, instances: int, users: int, count: int) -> None:
    now = wall_clock_ms()
    for n in range(count):
        publisher.publish(snapshot(n % instances, users, now + n // instances))
    publisher.flush(120)


def bare_read(
    settings: KafkaSettings, topic: str, group: str
) -> tuple[float, list[bytes]]:
    reader = Consumer(settings, group)
    try:
        started = time.perf_counter()
        high = reader.watermarks(topic, 0)[1]
        reader.assign([PartitionStart(topic, 0, BEGINNING)])
        values: list[bytes] = []
        last = -1
        while last < high - 1:
            for record in reader.poll_batch(1000, 0.1):
                last = record.offset
                if record.value is not None:
                    values.append(record.value)
        return time.perf_counter() - started, values
    finally:
        reader.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="an existing broker (default: start one)")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--follow-records", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    with broker(args.bootstrap) as bootstrap:
        settings = KafkaSettings(bootstrap_servers=bootstrap)
        prefix = f"bench_presence_{uuid.uuid4().hex[:8]}"
        topic = topics.presence_topic(prefix)
        Admin(settings).create_topics(
            [topics.TopicSpec(topic, 1, topics.COMPACTED_TOPIC_CONFIG)]
        )
        publisher = Publisher(Producer(settings), prefix)

        started = time.perf_counter()
        publish_round(publisher, args.instances, args.users, args.instances)
        publish_s = time.perf_counter() - started
        record_bytes = len(encode(snapshot(0, args.users, wall_clock_ms())))

        rebuild: list[float] = []
        fetch: list[float] = []
        decode_s: list[float] = []
        for n in range(args.repeat):
            fetch_s, values = bare_read(settings, topic, f"{prefix}.bare{n}")
            fetch.append(fetch_s)
            t0 = time.perf_counter()
            for value in values:
                decode(value)
            decode_s.append(time.perf_counter() - t0)

            follower = PresenceFollower(Consumer(settings, f"{prefix}.view{n}"), prefix)
            try:
                stats = follower.replay()
                assert follower.counts().instances == args.instances
                assert follower.counts().users == args.instances * args.users
                rebuild.append(stats.seconds)
            finally:
                follower.close()

        # Follow: replay, then time applying a backlog of heartbeats.
        follower = PresenceFollower(Consumer(settings, f"{prefix}.follow"), prefix)
        try:
            follower.replay()
            base = follower.records
            publish_round(publisher, args.instances, args.users, args.follow_records)
            t0 = time.perf_counter()
            while follower.records < base + args.follow_records:
                follower.poll_once(0.1)
            follow_s = time.perf_counter() - t0
        finally:
            follower.close()

    result = {
        "instances": args.instances,
        "users_per_instance": args.users,
        "record_bytes": record_bytes,
        "publish_s": round(publish_s, 3),
        "rebuild_s_median": round(statistics.median(rebuild), 3),
        "rebuild_s_all": [round(s, 3) for s in rebuild],
        "baseline_fetch_s_median": round(statistics.median(fetch), 3),
        "baseline_decode_s_median": round(statistics.median(decode_s), 3),
        "follow_records": args.follow_records,
        "follow_s": round(follow_s, 3),
        "follow_records_per_s": round(args.follow_records / follow_s),
        "follow_devices_per_s": round(args.follow_records * args.users / follow_s),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"presence view, {args.instances} instances x {args.users} syncing devices "
        f"({record_bytes} B per snapshot)\n"
        f"  rebuild from the compacted topic: {result['rebuild_s_median']:.3f} s median "
        f"(runs {result['rebuild_s_all']}); bare fetch {result['baseline_fetch_s_median']:.3f} s, "
        f"bare decode {result['baseline_decode_s_median']:.3f} s\n"
        f"  follow: {result['follow_records_per_s']:,} records/s "
        f"({result['follow_devices_per_s']:,} devices/s) over {args.follow_records:,} records"
    )


if __name__ == "__main__":
    main()
