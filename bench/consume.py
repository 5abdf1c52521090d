"""Live consume: synkafka's ReplicationConsumer against the floor of a Python consumer.

Publishes ``--rows`` realistic rows (about 80% ``events`` records, the rest receipts
and presence; one RDATA record per token, published with synkafka's Publisher) to three
single-partition stream topics, then reads them all back, ``--repeat`` times each,
interleaved:

* **ours**: :class:`ReplicationConsumer` (``--from earliest``, no database), poll loop
  -> decode -> PositionTracker -> per-stream worker threads -> a handler that touches
  every row; timed from the start of ``run()`` until the handler saw every row.
* **floor**: a bare confluent-kafka consumer, same librdkafka settings, polling
  ``consume(1000)`` and decoding each record with bare fastavro ``schemaless_reader``
  (the 10-byte single-object header skipped), nothing else.
* **bare + synkafka decode** (reference): the floor's loop with ``adapter.codec.avro_codec.decode``
  instead of bare fastavro, to separate the codec's cost from the runtime's.
* **bare, no decode** (reference): the same loop without decoding.

Target (docs/benchmarks.md): ours >= 0.8 of the floor's rows/s.

Usage::

    .venv/bin/python -m bench.consume                    # 1,000,000 rows, own Kafka
    .venv/bin/python -m bench.consume --rows 200000 --repeat 3
    .venv/bin/python -m bench.consume --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import io
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from fastavro import schemaless_reader
from prometheus_client import CollectorRegistry

from adapter.codec.avro_codec import decode, default_codec
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.io.kafka.consumer import DEFAULT_CONSUMER_CONFIG
from adapter.io.metrics import Metrics
from adapter.runtime import interpreter
from adapter.runtime.consumer import ConsumerOptions, ReplicationConsumer
from bench._common import (
    STREAMS,
    RowCounter,
    build_commands,
    ensure_topics,
    fresh_heap,
    header,
    kafka,
    median,
    new_prefix,
    publish,
    ratio_spread,
    spread,
    verdict,
)

TARGET = 0.8
BATCH = 1000


def run_ours(bootstrap: str, prefix: str, rows: int) -> float:
    """Seconds for ReplicationConsumer to hand every row to the handler."""
    counter = RowCounter(rows)
    consumer = ReplicationConsumer(
        KafkaSettings(bootstrap_servers=bootstrap),
        ConsumerOptions(
            prefix=prefix,
            instance_name=f"bench-{uuid.uuid4().hex[:8]}",
            streams=STREAMS,
            start_from="earliest",
            poll_batch=BATCH,
        ),
        counter,
        open_reader=None,
        metrics=Metrics(CollectorRegistry()),
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            # Tuned as `synkafka consume` tunes its process (the floor runs untuned).
            with interpreter.tuned():
                consumer.run(stop)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(exc)
            counter.done.set()

    thread = threading.Thread(target=target, daemon=True)
    started = time.perf_counter()
    thread.start()
    counter.done.wait()
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join(60)
    if errors:
        raise errors[0]
    assert counter.rows == rows, (counter.rows, rows)
    return elapsed


def _bare_consumer(bootstrap: str, prefix: str) -> Consumer:
    conf: dict[str, object] = {
        **DEFAULT_CONSUMER_CONFIG,
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
    }
    consumer = Consumer(conf)
    consumer.assign(
        [
            TopicPartition(topics.stream_topic(prefix, s), 0, OFFSET_BEGINNING)
            for s in STREAMS
        ]
    )
    return consumer


def run_floor(bootstrap: str, prefix: str, rows: int) -> float:
    """Seconds for a bare consumer + bare fastavro decoding to read every row."""
    schema = default_codec().schemas.current["synkafka.command.Rdata"].parsed
    started = time.perf_counter()
    consumer = _bare_consumer(bootstrap, prefix)
    seen = 0
    while seen < rows:
        for message in consumer.consume(BATCH, 0.1):
            if message.error() is not None:
                raise RuntimeError(message.error())
            body = io.BytesIO(message.value())  # type: ignore[arg-type]
            body.seek(10)
            seen += len(schemaless_reader(body, schema)["rows"])  # type: ignore[call-overload,index]
    elapsed = time.perf_counter() - started
    consumer.close()
    assert seen == rows, (seen, rows)
    return elapsed


def run_codec(bootstrap: str, prefix: str, rows: int) -> float:
    """Seconds for a bare consumer + synkafka's ``decode`` (dataclasses out) per record."""
    started = time.perf_counter()
    consumer = _bare_consumer(bootstrap, prefix)
    seen = 0
    while seen < rows:
        for message in consumer.consume(BATCH, 0.1):
            if message.error() is not None:
                raise RuntimeError(message.error())
            seen += len(decode(message.value()).rows)  # type: ignore[arg-type,union-attr]
    elapsed = time.perf_counter() - started
    consumer.close()
    assert seen == rows, (seen, rows)
    return elapsed


def run_no_decode(bootstrap: str, prefix: str, records: int) -> float:
    """Seconds for a bare consumer to fetch every record (values untouched)."""
    started = time.perf_counter()
    consumer = _bare_consumer(bootstrap, prefix)
    seen = 0
    while seen < records:
        for message in consumer.consume(BATCH, 0.1):
            if message.error() is not None:
                raise RuntimeError(message.error())
            message.value()
            seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args(argv)

    with kafka(args.bootstrap) as bootstrap:
        prefix = new_prefix("consume")
        ensure_topics(bootstrap, prefix)
        commands = build_commands(args.rows)
        records = len(commands)
        started = time.perf_counter()
        publish(bootstrap, prefix, commands)
        publish_s = time.perf_counter() - started
        del commands
        header(
            "consume (live, from Kafka)",
            rows=f"{args.rows:,} in {records:,} RDATA records, 3 topics x 1 partition",
            publish=f"{publish_s:.1f} s with Publisher",
        )
        ours: list[float] = []
        floor: list[float] = []
        bare: list[float] = []
        codec: list[float] = []
        runs: dict[str, tuple[list[float], Callable[[], float]]] = {
            "ours": (ours, lambda: run_ours(bootstrap, prefix, args.rows)),
            "floor": (floor, lambda: run_floor(bootstrap, prefix, args.rows)),
            "codec": (codec, lambda: run_codec(bootstrap, prefix, args.rows)),
            "bare": (bare, lambda: run_no_decode(bootstrap, prefix, records)),
        }
        for n in range(args.repeat):
            # Alternate who goes first so neither always gets the warmer broker cache.
            order = ("ours", "floor") if n % 2 == 0 else ("floor", "ours")
            for who in (*order, "codec", "bare"):
                fresh_heap()
                results, run = runs[who]
                results.append(args.rows / run())
                print(
                    f"   run {n + 1} {who:6} {results[-1]:>12,.0f} rows/s", flush=True
                )
    ratio = median(ours) / median(floor)
    print(f"   ours (ReplicationConsumer)     {spread(ours)} rows/s")
    print(f"   floor (bare consume + decode)  {spread(floor)} rows/s")
    print(f"   bare consume + synkafka decode {spread(codec)} rows/s (reference)")
    print(f"   bare consume, no decode        {spread(bare)} rows/s (reference)")
    print(
        f"   ours / floor = {ratio:.2f} (per run {ratio_spread(ours, floor)}); "
        f"target >= {TARGET}: {verdict(ratio, TARGET)}"
    )
    print(
        f"   ours / (bare consume + synkafka decode) = {median(ours) / median(codec):.2f}"
        " (what the runtime costs on top of the codec)"
    )
    return {"ours": ours, "floor": floor, "codec": codec, "bare": bare, "ratio": ratio}


if __name__ == "__main__":
    main()
