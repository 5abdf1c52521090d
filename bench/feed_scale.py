"""Feed readers scale out: one ``synkafka feed-consume`` group of 1, 2 and 4 members.

Each member is a :class:`~adapter.runtime.feed_reader.FeedReader` (the command's
runtime, real consumer group, cooperative-sticky) in this process, with a handler
that takes ``--delay-ms`` per event by sleeping, like a handler waiting on a search
index or a database. Per member at most ``--concurrency`` rooms run at once, so one
member's rate is bounded by its handler, and more members should add rate.

For each group size: a new feed topic of ``--partitions`` partitions; the members
join and the bench waits until the group is stable (every partition assigned, evenly);
only then are ``--events`` events produced, spread over ``--rooms`` rooms (rooms
spread evenly over the partitions, so the measurement is of the readers, not of key
hashing). Throughput is timed from the first event handled to the last. The one-member
group measured in the same run is the baseline.

Target (issue 16): 2 and 4 members reach at least 1.9x and 3.6x the one-member rate.

Usage::

    .venv/bin/python -m bench.feed_scale                 # own Kafka
    .venv/bin/python -m bench.feed_scale --events 12000 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import Producer as KafkaProducer
from prometheus_client import CollectorRegistry

from adapter.codec.avro_codec import encode
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.feed import FeedEvent
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.group_consumer import GroupConsumer, Message, RebalanceListener
from adapter.io.metrics import Metrics
from adapter.runtime.feed_reader import FeedReader, FeedReaderOptions
from bench import _common

TARGETS = {2: 1.9, 4: 3.6}


class _Clock:
    """Counts handled events; notes the first and last handling time."""

    def __init__(self, delay_s: float) -> None:
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def __call__(self, _event: FeedEvent) -> None:
        time.sleep(self._delay_s)
        now = time.perf_counter()
        with self._lock:
            if self.count == 0:
                self.first = now
            self.count += 1
            self.last = now


def _no_dead_letters(message: Message, reason: str) -> None:
    raise AssertionError(f"unexpected dead letter at {message.offset()}: {reason}")


def _event(n: int, room: str) -> FeedEvent:
    body = json.dumps({"type": "m.room.message", "content": {"body": f"message {n}"}})
    return FeedEvent(
        f"$bench{n}", room, "m.room.message", None, "@bench:test", n, n + 1,
        "persister1", False, False, None, None, 3, body,
    )  # fmt: skip


def _produce(bootstrap: str, topic: str, args: argparse.Namespace) -> None:
    producer = KafkaProducer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    for n in range(args.events):
        r = n % args.rooms
        room = f"!room{r}:bench"
        producer.produce(
            topic,
            encode(_event(n, room)),
            room.encode(),
            partition=r % args.partitions,
            headers=[("synkafka.format", b"avro")],
        )
        producer.poll(0)
    if producer.flush(60) != 0:
        raise SystemExit("could not produce the bench's events")


def _opener(
    settings: KafkaSettings, group: str, topic: str
) -> Callable[[RebalanceListener, Callable[[dict[str, object]], None]], GroupConsumer]:
    def open_consumer(
        listener: RebalanceListener, on_stats: Callable[[dict[str, object]], None]
    ) -> GroupConsumer:
        return GroupConsumer(
            settings, group, topic, listener, session_timeout_s=10.0, on_stats=on_stats
        )

    return open_consumer


def run_group(bootstrap: str, members: int, args: argparse.Namespace) -> float:
    """Events per second one group of ``members`` handles."""
    prefix = _common.new_prefix("feedscale")
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    topic = topics.feed_topic(prefix)
    Admin(settings).create_topics(
        [topics.feed_topic_spec(prefix, partitions=args.partitions)]
    )
    clock = _Clock(args.delay_ms / 1000.0)
    stop = threading.Event()
    readers = [
        FeedReader(
            _opener(settings, topics.feed_reader_group(prefix, "bench"), topic),
            clock,
            _no_dead_letters,
            FeedReaderOptions(concurrency=args.concurrency),
            Metrics(CollectorRegistry()),
        )
        for _ in range(members)
    ]
    threads = [threading.Thread(target=r.run, args=(stop,)) for r in readers]
    for thread in threads:
        thread.start()
    try:
        even = args.partitions // members
        deadline = time.monotonic() + 60
        while sorted(len(r.assigned_partitions) for r in readers) != [even] * members:
            if time.monotonic() > deadline:
                raise SystemExit(f"the group of {members} did not settle in 60 s")
            time.sleep(0.05)
        _produce(bootstrap, topic, args)
        deadline = time.monotonic() + 600
        while clock.count < args.events:
            if time.monotonic() > deadline:
                raise SystemExit(f"{clock.count} of {args.events} events handled")
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    return float(args.events - 1) / (clock.last - clock.first)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rooms", type=int, default=240)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    if 1 not in args.sizes:
        args.sizes.insert(0, 1)
    rates: dict[int, list[float]] = {size: [] for size in args.sizes}
    with _common.kafka(args.bootstrap) as bootstrap:
        for round_ in range(args.repeat):
            for size in args.sizes:  # interleaved: a neighbour's load hits all alike
                rate = run_group(bootstrap, size, args)
                rates[size].append(rate)
                print(
                    f"round {round_ + 1}: {size} member(s): {rate:,.0f} events/s",
                    flush=True,
                )
    base = statistics.median(rates[1])
    print(
        f"\n{args.events:,} events, {args.rooms} rooms, {args.partitions} partitions, "
        f"handler {args.delay_ms:g} ms (sleep), {args.concurrency} rooms at once per "
        "member"
    )
    for size in args.sizes:
        rate = statistics.median(rates[size])
        target = TARGETS.get(size)
        verdict = ""
        if target is not None:
            verdict = f"  target >= {target}x: {'met' if rate / base >= target else 'NOT met'}"
        print(
            f"{size} member(s): {rate:,.0f} events/s (runs: "
            f"{', '.join(f'{r:,.0f}' for r in rates[size])}), "
            f"{rate / base:.2f}x one member{verdict}"
        )


if __name__ == "__main__":
    main()
