"""Shared pieces of the runtime benchmarks: services, data, handlers, statistics.

Every benchmark starts its own services from :mod:`adapter.devstack.services` (Kafka, and
PostgreSQL where needed) unless ``--bootstrap`` / ``--dsn`` points at running ones,
builds realistic replication rows, and compares synkafka with a bare baseline measured
in the same process run, runs interleaved (ours, baseline, ours, baseline, ...) so a
neighbour's load on the shared machine hits both alike.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import statistics
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from adapter.core import topics
from adapter.core.commands import RdataCommand
from adapter.core.config import KafkaSettings
from adapter.core.ports import StreamUpdate
from adapter.core.rows import (
    EventsCurrentStateRow,
    EventsEventRow,
    PresenceRow,
    ReceiptsRow,
    Row,
)
from adapter.devstack.services import KafkaBroker, PostgresCluster
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.producer import Producer
from adapter.runtime.publisher import Publisher

STREAMS = ("events", "receipts", "presence")
"""The streams the benchmark data uses (one topic each, one partition each)."""

WRITER = "event_persister1"


# -- services -----------------------------------------------------------------------


@contextmanager
def kafka(bootstrap: str | None) -> Iterator[str]:
    """``bootstrap.servers`` of ``bootstrap``, or of a broker started for the run."""
    if bootstrap:
        yield bootstrap
        return
    with KafkaBroker(heap_mb=1024) as broker:
        yield broker.bootstrap_servers


@contextmanager
def postgres(dsn: str | None) -> Iterator[str]:
    """A DSN of a fresh database: ``dsn`` itself, or one on a cluster started for the run."""
    if dsn:
        yield dsn
        return
    with PostgresCluster() as cluster:
        yield cluster.create_database(f"bench_{uuid.uuid4().hex[:8]}")


def new_prefix(label: str) -> str:
    """A topic prefix no earlier run used."""
    return f"bench.{label}.{uuid.uuid4().hex[:8]}"


def ensure_topics(bootstrap: str, prefix: str) -> None:
    """Create the stream topics (and the other synkafka topics) under ``prefix``."""
    Admin(KafkaSettings(bootstrap_servers=bootstrap)).create_topics(
        topics.topic_specs(prefix, STREAMS)
    )


# -- data ---------------------------------------------------------------------------


def build_commands(
    rows: int, seed: int = 7, instance_name: str = WRITER
) -> list[RdataCommand]:
    """RDATA commands holding ``rows`` rows in total, as a busy homeserver makes them.

    About 80% of the records are ``events`` (a plain ``ev`` row; one in seven is a
    state event whose record also holds its ``state`` row; one in ten is a
    reaction), 10% ``receipts`` and 10% ``presence``. Each stream has its own tokens.
    """
    rng = random.Random(seed)
    rooms = [f"!{rng.getrandbits(96):024x}:example.org" for _ in range(500)]
    users = [f"@user{n}:example.org" for n in range(2000)]
    now = 1_795_882_766_021
    tokens = dict.fromkeys(STREAMS, 1000)
    out: list[RdataCommand] = []
    left = rows
    while left > 0:
        kind = rng.random()
        built: tuple[Row, ...]
        if kind < 0.8:
            stream = "events"
            room = rng.choice(rooms)
            event_id = f"${rng.getrandbits(256):064x}"[:44]
            roll = rng.random()
            if roll < 0.14 and left >= 2:
                user = rng.choice(users)
                built = (
                    EventsEventRow(
                        event_id,
                        room,
                        "m.room.member",
                        user,
                        None,
                        None,
                        "join",
                        False,
                        False,
                    ),
                    EventsCurrentStateRow(room, "m.room.member", user, event_id),
                )
            else:
                relates = f"${rng.getrandbits(256):064x}"[:44] if roll < 0.24 else None
                built = (
                    EventsEventRow(
                        event_id,
                        room,
                        "m.reaction" if relates else "m.room.message",
                        None,
                        None,
                        relates,
                        None,
                        False,
                        False,
                    ),
                )
        elif kind < 0.9:
            stream = "receipts"
            data = json.dumps(
                {"ts": now + rng.randint(0, 10**6)}, separators=(",", ":")
            )
            built = (
                ReceiptsRow(
                    rng.choice(rooms),
                    "m.read",
                    rng.choice(users),
                    f"${rng.getrandbits(256):064x}"[:44],
                    "main" if rng.random() < 0.3 else None,
                    data,
                ),
            )
        else:
            stream = "presence"
            ts = now + rng.randint(0, 10**6)
            built = (
                PresenceRow(
                    rng.choice(users),
                    rng.choice(("online", "unavailable", "offline")),
                    ts,
                    ts - 5000,
                    ts - 1000,
                    "lunch" if rng.random() < 0.1 else None,
                    rng.random() < 0.5,
                ),
            )
        tokens[stream] += rng.randint(1, 3)
        out.append(RdataCommand(stream, instance_name, tokens[stream], built))
        left -= len(built)
    return out


def publish(bootstrap: str, prefix: str, commands: Sequence[RdataCommand]) -> None:
    """Publish ``commands`` with synkafka's :class:`Publisher` and wait for every ack."""
    producer = Producer(KafkaSettings(bootstrap_servers=bootstrap))
    publisher = Publisher(producer, prefix)
    for command in commands:
        publisher.publish(command)
    publisher.flush(300)
    producer.close()


# -- handlers ------------------------------------------------------------------------


def touch(update: StreamUpdate) -> int:
    """What every benchmark handler does with an update: look at each row once."""
    n = 0
    for row in update.rows:
        if row is not None:
            n += 1
    return n


class RowCounter:
    """A handler that touches every row and sets ``done`` once ``expected`` rows came.

    Streams call it from their own threads; the lock keeps the count exact.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.rows = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, update: StreamUpdate) -> None:
        n = touch(update)
        with self._lock:
            self.rows += n
            if self.rows >= self.expected:
                self.done.set()


_process_counter: RowCounter | None = None


def count_then_stop(update: StreamUpdate) -> None:
    """``--handler`` for ``python -m adapter consume`` in a child process.

    Touches every row; once ``BENCH_EXPECT_ROWS`` rows came, sends SIGTERM to its own
    process, which makes the consumer finish, commit and exit 0.
    """
    global _process_counter  # one counter per child process
    counter = _process_counter
    if counter is None:
        counter = _process_counter = RowCounter(int(os.environ["BENCH_EXPECT_ROWS"]))
    counter(update)
    if counter.done.is_set() and counter.rows == counter.expected:
        counter.rows += 1  # signal once
        os.kill(os.getpid(), signal.SIGTERM)


# -- statistics ----------------------------------------------------------------------


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``median (min to max)`` of the runs, or the single value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return (
        f"{fmt.format(statistics.median(values))} "
        f"({fmt.format(min(values))} to {fmt.format(max(values))})"
    )


def ratio_spread(ours: Sequence[float], base: Sequence[float]) -> str:
    """Ratios of runs paired in order (run i of ours over run i of the baseline)."""
    ratios = [o / b for o, b in zip(ours, base, strict=True)]
    return spread(ratios, "{:.2f}")


def median(values: Sequence[float]) -> float:
    """The median."""
    return float(statistics.median(values))


def fresh_heap() -> None:
    """Collect garbage left by the previous run so it does not slow the next one."""
    gc.collect()


def verdict(value: float, target: float, *, below: bool = False) -> str:
    """``met`` / ``NOT met`` for a figure against its target."""
    ok = value < target if below else value >= target
    return "met" if ok else "NOT met"


def header(title: str, **facts: Any) -> None:
    """Print a benchmark's title and the facts of its setup."""
    print(f"== {title}")
    for key, value in facts.items():
        print(f"   {key}: {value}")
