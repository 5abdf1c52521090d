"""``synkafka demo``: a smoke run of the local stack.

For now it starts a real single-node Kafka (fetching its jars on first use), creates a
topic, produces one record, consumes it back and prints both sides with offsets and
timings, then stops everything. Every process is stopped on the way out, also on
Ctrl-C or SIGTERM.

Shape for the full demo: :func:`demo` only opens a
:class:`~adapter.localstack.LocalStack` and hands it to a *scenario* function; the full
demo will ask for PostgreSQL and Redis too and swap :func:`_kafka_round_trip` for the
bridge at work.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import typer
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from adapter.cli._app import app
from adapter.errors import KafkaIOError, ServiceError
from adapter.localstack import KAFKA_VERSION, LocalStack

__all__ = ["demo"]

_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class _RoundTrip:
    topic: str
    key: bytes
    value: bytes
    produced_offset: int
    consumed_offset: int
    consumed_key: bytes | None
    consumed_value: bytes | None
    ack_ms: float
    consume_ms: float


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """Make SIGTERM/SIGHUP behave like Ctrl-C, so the stack is stopped in order."""
    previous = {
        s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _kafka_round_trip(bootstrap: str) -> _RoundTrip:
    """Create a topic, produce one record and consume it back from its offset."""
    topic = f"synkafka-demo-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
        topic
    ].result(timeout=_TIMEOUT_S)

    key, value = b"@alice:demo.local", b'{"hello": "kafka"}'
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        (errors.append(err) if err is not None else delivered.append(msg))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    sent_at = time.monotonic()
    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    if producer.flush(_TIMEOUT_S) != 0 or errors or not delivered:
        raise KafkaIOError(
            f"the demo record was not acknowledged: {errors or 'timeout'}"
        )
    ack_ms = (time.monotonic() - sent_at) * 1000
    produced_offset = delivered[0].offset()
    if produced_offset is None:
        raise KafkaIOError("the broker acknowledged the demo record without an offset")

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, produced_offset)])
        started = time.monotonic()
        deadline = started + _TIMEOUT_S
        while True:
            msg = consumer.poll(0.5)
            if msg is not None:
                if (err := msg.error()) is not None:
                    raise KafkaIOError(f"consuming the demo record failed: {err}")
                break
            if time.monotonic() > deadline:
                raise KafkaIOError(f"no record came back within {_TIMEOUT_S:g} s")
        consume_ms = (time.monotonic() - started) * 1000
    finally:
        consumer.close()
    consumed_offset = msg.offset()
    if consumed_offset is None:
        raise KafkaIOError("the consumed demo record has no offset")
    key_back, value_back = msg.key(), msg.value()
    return _RoundTrip(
        topic=topic,
        key=key,
        value=value,
        produced_offset=produced_offset,
        consumed_offset=consumed_offset,
        consumed_key=key_back if isinstance(key_back, bytes) else None,
        consumed_value=value_back if isinstance(value_back, bytes) else None,
        ack_ms=ack_ms,
        consume_ms=consume_ms,
    )


def _smoke(stack: LocalStack, say: Callable[[str], None]) -> bool:
    """The current scenario: one record through the broker; return whether it matched."""
    if stack.kafka is None:
        raise ServiceError("the demo needs the local Kafka broker")
    trip = _kafka_round_trip(stack.kafka.bootstrap_servers)
    say(f"Created topic {trip.topic}.")
    say(
        f"Produced  {trip.topic}[0]@{trip.produced_offset}  "
        f"key={trip.key!r} value={trip.value!r}  (acknowledged in {trip.ack_ms:.1f} ms)"
    )
    say(
        f"Consumed  {trip.topic}[0]@{trip.consumed_offset}  "
        f"key={trip.consumed_key!r} value={trip.consumed_value!r}  "
        f"(received in {trip.consume_ms:.1f} ms)"
    )
    same = (trip.consumed_key, trip.consumed_value) == (trip.key, trip.value)
    say("Round trip OK." if same else "Round trip MISMATCH.")
    return same


@app.command()
def demo() -> None:
    """Start a local Kafka broker, send a record through it and read it back."""
    say = typer.echo
    started = time.monotonic()
    say(f"synkafka demo: a local Apache Kafka {KAFKA_VERSION} on 127.0.0.1.")
    try:
        with _stop_signals_interrupt(), LocalStack(kafka=True, progress=say) as stack:
            ok = _smoke(stack, say)
    except KeyboardInterrupt:
        # LocalStack.__exit__ has already stopped every process it started.
        typer.echo("Interrupted; every local service was stopped.", err=True)
        raise typer.Exit(code=130) from None
    say(f"Stopped everything; the demo took {time.monotonic() - started:.1f} s.")
    if not ok:
        raise typer.Exit(code=1)
