"""Publish: synkafka's Publisher against bare fastavro encoding plus a bare producer.

Builds ``--rows`` realistic rows (the RDATA records of :func:`bench._common.build_commands`)
and publishes them, ``--repeat`` times each, interleaved, each run to fresh topics:

* **ours**: ``Publisher.publish(command)`` per record (dataclass -> Avro single-object
  bytes, topic and key routing, headers, checked delivery), then ``flush()``;
* **floor**: per record, bare fastavro ``schemaless_writer`` of the equivalent dict
  (header bytes written first, so the records are byte-identical) and a bare
  confluent-kafka ``Producer.produce`` with the same topic, key, headers and producer
  settings (idempotent, lz4, linger 5 ms), one shared delivery callback, ``poll(0)``
  every 1,000 records, then ``flush()``.

Both are timed up to the last acknowledgement. Target: ours >= 0.8 of the floor.

Usage::

    .venv/bin/python -m bench.publish                    # 1,000,000 rows, own Kafka
    .venv/bin/python -m bench.publish --rows 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as BareProducer
from fastavro import schemaless_writer

from adapter.codec.avro_codec import MAGIC, default_codec, row_name
from adapter.core import topics
from adapter.core.commands import RdataCommand
from adapter.core.config import KafkaSettings
from adapter.io.kafka.producer import DEFAULT_PRODUCER_CONFIG, Producer
from adapter.runtime.publisher import Publisher
from bench._common import (
    build_commands,
    ensure_topics,
    fresh_heap,
    header,
    kafka,
    median,
    new_prefix,
    ratio_spread,
    spread,
    verdict,
)

TARGET = 0.8


def equivalent_dict(command: RdataCommand) -> dict[str, Any]:
    """The dict bare fastavro writes for ``command`` (rows in tuple notation)."""
    return {
        "stream_name": command.stream_name,
        "instance_name": command.instance_name,
        "token": command.token,
        "rows": [
            (
                row_name(type(row)),
                {name: getattr(row, name) for name in row._fields},
            )
            for row in command.rows
        ],
    }


def run_ours(bootstrap: str, commands: Sequence[RdataCommand]) -> float:
    """Seconds for Publisher to publish and flush every command."""
    prefix = new_prefix("publish")
    ensure_topics(bootstrap, prefix)
    producer = Producer(KafkaSettings(bootstrap_servers=bootstrap))
    publisher = Publisher(producer, prefix)
    producer.client.list_topics(timeout=10)  # connected before the clock starts
    started = time.perf_counter()
    for command in commands:
        publisher.publish(command)
    publisher.flush(300)
    elapsed = time.perf_counter() - started
    assert producer.acknowledged >= len(commands)
    producer.close()
    return elapsed


def run_floor(bootstrap: str, items: Sequence[tuple[str, dict[str, Any]]]) -> float:
    """Seconds for bare fastavro + a bare producer to write and flush every record."""
    prefix = new_prefix("publish")
    ensure_topics(bootstrap, prefix)
    version = default_codec().schemas.current["synkafka.command.Rdata"]
    schema = version.parsed
    magic = MAGIC + version.fingerprint
    producer = BareProducer({**DEFAULT_PRODUCER_CONFIG, "bootstrap.servers": bootstrap})
    producer.list_topics(timeout=10)
    failures: list[KafkaError] = []
    acked = [0]

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err)
        else:
            acked[0] += 1

    topic_of = {
        s: topics.stream_topic(prefix, s) for s in ("events", "receipts", "presence")
    }
    headers_of: dict[str, list[tuple[str, str | bytes | None]]] = {
        s: [
            (topics.HEADER_COMMAND, b"RDATA"),
            (topics.HEADER_STREAM, s.encode()),
            (topics.HEADER_WRITER, b"event_persister1"),
        ]
        for s in topic_of
    }
    started = time.perf_counter()
    for n, (stream, datum) in enumerate(items):
        out = io.BytesIO()
        out.write(magic)
        schemaless_writer(out, schema, datum)
        while True:
            try:
                producer.produce(
                    topic_of[stream],
                    out.getvalue(),
                    datum["instance_name"],
                    headers=headers_of[stream],
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if n % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(300)
    elapsed = time.perf_counter() - started
    assert not failures, failures[:3]
    assert not remaining, remaining
    assert acked[0] == len(items)
    return elapsed


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args(argv)

    commands = build_commands(args.rows)
    items = [(c.stream_name, equivalent_dict(c)) for c in commands]
    ours: list[float] = []
    floor: list[float] = []
    with kafka(args.bootstrap) as bootstrap:
        header(
            "publish",
            rows=f"{args.rows:,} in {len(commands):,} RDATA records, 3 topics x 1 partition",
        )
        # Untimed warm-up of both paths (broker, page cache, first connections).
        run_ours(bootstrap, commands[:20_000])
        run_floor(bootstrap, items[:20_000])
        for n in range(args.repeat):
            order = ("ours", "floor") if n % 2 == 0 else ("floor", "ours")
            for who in order:
                fresh_heap()
                if who == "ours":
                    ours.append(args.rows / run_ours(bootstrap, commands))
                    value = ours[-1]
                else:
                    floor.append(args.rows / run_floor(bootstrap, items))
                    value = floor[-1]
                print(f"   run {n + 1} {who:6} {value:>12,.0f} rows/s", flush=True)
    ratio = median(ours) / median(floor)
    print(f"   ours (Publisher)                    {spread(ours)} rows/s")
    print(f"   floor (bare fastavro + Producer)    {spread(floor)} rows/s")
    print(
        f"   ours / floor = {ratio:.2f} (per run {ratio_spread(ours, floor)}); "
        f"target >= {TARGET}: {verdict(ratio, TARGET)}"
    )
    return {"ours": ours, "floor": floor, "ratio": ratio}


if __name__ == "__main__":
    main()
