"""Bridge: commands/s from Redis into Kafka, and Redis-receipt-to-Kafka-ack lag.

Replays the recorded Synapse lines (``tests/data/synapse_lines/*.txt``: the startup
bursts, RDATA of every exercised stream with ``batch`` runs, POSITION, LOCK_RELEASED,
USER_SYNC, USER_IP...) into Redis, repeated with rising tokens (each round adds the
template's token span to every RDATA/POSITION token, so the bridge sees new tokens
and publishes every round). A publisher process sends them; the bridge runs in this
process; in the same run a bare redis-py subscriber process only counts the messages
(``get_message`` in a loop: the ceiling of a Python subscriber that does nothing).

Two phases:

* **burst**: ``--lines`` commands published as fast as Redis takes them; the bridge's
  rate is lines / (first line received .. last record acknowledged);
* **paced**: ``--rate`` commands/s for ``--seconds``; lag p50/p99/max over every
  record (Redis receipt to broker acknowledgement).

Usage::

    .venv/bin/python -m bench.bridge                    # starts its own Kafka and Redis
    .venv/bin/python -m bench.bridge --bootstrap 127.0.0.1:9092 --lines 200000
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import re
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from adapter.core.config import KafkaSettings
from adapter.core.rows import STREAM_NAMES
from adapter.devstack.services import KafkaBroker, RedisServer
from adapter.io.kafka.producer import Producer
from adapter.io.metrics import CollectorRegistry, Metrics
from adapter.io.redis import ReplicationSubscriber
from adapter.runtime import interpreter
from adapter.runtime.bridge import Bridge
from adapter.runtime.dead_letter_writer import DeadLetterWriter
from tests.integration.harness import ensure_topics

_DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "synapse_lines"
_RECORDED_SERVER = "synkafka.test"
_TOKENS = re.compile(r"^(RDATA|POSITION) (\S+) (\S+) (\S+)(?: (\S+))?(.*)$", re.S)


@contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with KafkaBroker(heap_mb=1024) as local:
        yield local.bootstrap_servers


def template(server: str) -> tuple[list[tuple[str, str]], int]:
    """The recorded (channel, line) pairs of both engines, and their token span."""
    pairs: list[tuple[str, str]] = []
    top = 0
    for name in ("postgres.txt", "sqlite.txt"):
        for raw in (_DATA / name).read_text().splitlines():
            channel, _, line = raw.partition("\t")
            pairs.append((channel.replace(_RECORDED_SERVER, server, 1), line))
            for number in re.findall(
                r"^(?:RDATA|POSITION) \S+ \S+ (\d+)(?: (\d+))?", line
            ):
                top = max([top, *(int(n) for n in number if n)])
    return pairs, top + 1


def shifted(line: str, offset: int) -> str:
    """``line`` with its RDATA/POSITION tokens moved up by ``offset``."""
    if not offset or not line.startswith(("RDATA ", "POSITION ")):
        return line
    if line.startswith("RDATA "):
        name, stream, writer, token, rest = line.split(" ", 4)
        if token != "batch":  # noqa: S105 (the batch sentinel)
            token = str(int(token) + offset)
        return f"{name} {stream} {writer} {token} {rest}"
    name, stream, writer, prev, new = line.split(" ", 4)
    return f"{name} {stream} {writer} {int(prev) + offset} {int(new) + offset}"


def lines_for(server: str, count: int, first_round: int) -> list[tuple[str, str]]:
    pairs, span = template(server)
    out: list[tuple[str, str]] = []
    round_ = first_round
    while len(out) < count:
        out.extend((c, shifted(ln, round_ * span)) for c, ln in pairs)
        round_ += 1
    return out[:count]


def publish(url: str, pairs: list[tuple[str, str]], rate: float, started: Any) -> None:
    """Publish ``pairs`` (in a child process): as fast as possible, or at ``rate``/s."""
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    chunk = 500 if rate <= 0 else max(1, int(rate / 200))
    t0 = time.monotonic()
    started.value = time.time()
    for i in range(0, len(pairs), chunk):
        for channel, line in pairs[i : i + chunk]:
            pipe.publish(channel, line)
        pipe.execute()
        if rate > 0:
            due = t0 + (i + chunk) / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    client.close()


def bare_count(url: str, server: str, expected: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """A redis-py subscriber that only counts messages (in a child process)."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(server, f"{server}/USER_IP")
    out.put("ready")
    n = 0
    first = last = 0.0
    deadline = time.monotonic() + 600
    while n < expected and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == "message":
            if n == 0:
                first = time.monotonic()
            n += 1
            last = time.monotonic()
    out.put((n, last - first))


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_phase(
    name: str,
    redis_url: str,
    server: str,
    bridge: Bridge,
    pairs: list[tuple[str, str]],
    rate: float,
    lags: list[float],
) -> dict[str, object]:
    lags.clear()
    before_lines = bridge.stats.lines
    before_acked = bridge._producer.acknowledged  # noqa: SLF001 (bench introspection)
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    counter = mp.Process(target=bare_count, args=(redis_url, server, len(pairs), queue))
    counter.start()
    assert queue.get(timeout=30) == "ready"
    started = mp.Value("d", 0.0)
    pub = mp.Process(target=publish, args=(redis_url, pairs, rate, started))
    t0 = time.monotonic()
    pub.start()
    first_seen: float | None = None
    deadline = time.monotonic() + 600
    while bridge.stats.lines - before_lines < len(pairs):
        if first_seen is None and bridge.stats.lines > before_lines:
            first_seen = time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{name}: the bridge saw only {bridge.stats.lines - before_lines}"
            )
        # Once the first line is seen, look ten times less often: each look takes
        # the GIL from the bridge thread being measured (10 ms in 5 to 10 s of run).
        time.sleep(0.001 if first_seen is None else 0.01)
    handled = time.monotonic()
    # Every record of these lines acknowledged and its report served (the bridge
    # thread serves reports while idle): the lag samples are complete.
    client = bridge._producer.client  # noqa: SLF001 (bench introspection)
    while len(client) > 0:
        time.sleep(0.001)
    done = time.monotonic()
    pub.join(60)
    bare_n, bare_s = queue.get(timeout=120)
    counter.join(10)
    start = first_seen or t0
    seconds = done - start
    return {
        "phase": name,
        "lines": len(pairs),
        "rate_target": rate or "max",
        "bridge_cmds_per_s": round(len(pairs) / seconds),
        # first line seen -> last line handled -> every record acknowledged
        "handled_s": round(handled - start, 2),
        "drained_s": round(done - handled, 2),
        "bare_redis_py_msgs_per_s": round(bare_n / bare_s) if bare_s else None,
        "bare_received": bare_n,
        "records_acked": bridge._producer.acknowledged - before_acked,  # noqa: SLF001
        "lag_p50_ms": round(quantile(lags, 0.5) * 1000, 1),
        "lag_p99_ms": round(quantile(lags, 0.99) * 1000, 1),
        "lag_max_ms": round(max(lags) * 1000, 1) if lags else None,
        "lag_mean_ms": round(statistics.fmean(lags) * 1000, 1) if lags else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    parser.add_argument("--lines", type=int, default=150_000, help="burst phase size")
    parser.add_argument("--rate", type=float, default=20_000, help="paced phase rate")
    parser.add_argument("--seconds", type=float, default=10, help="paced phase length")
    args = parser.parse_args()
    # The replayed rounds restart tokens per engine, which the bridge reports as
    # gaps it cannot repair (no database here): one warning each, not the subject.
    logging.basicConfig(level=logging.ERROR)
    server = f"bench-{uuid.uuid4().hex[:8]}.test"
    prefix = f"bench_bridge_{uuid.uuid4().hex[:8]}"
    with broker(args.bootstrap) as bootstrap, RedisServer() as redis_server:
        ensure_topics(bootstrap, prefix, STREAM_NAMES)
        metrics = Metrics(CollectorRegistry())
        lags: list[float] = []
        producer = Producer(
            KafkaSettings(bootstrap_servers=bootstrap),
            metrics=metrics,
            extra={"linger.ms": "2"},
        )
        bridge = Bridge(
            ReplicationSubscriber(redis_server.url, server),
            producer,
            prefix,
            metrics=metrics,
            on_lag=lags.append,
            dead_letters=DeadLetterWriter(
                KafkaSettings(bootstrap_servers=bootstrap),
                prefix,
                client_id="bench-bridge-dlq",
                metrics=metrics,
            ),
        )
        stop = threading.Event()

        def run() -> None:
            # Tuned as `synkafka bridge` tunes its process.
            with interpreter.tuned(switch_interval_s=None):
                bridge.run(stop)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while bridge.stats.lines == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # its own REPLICATE echo
        results = []
        burst = lines_for(server, args.lines, 1)
        results.append(
            run_phase("burst", redis_server.url, server, bridge, burst, 0, lags)
        )
        rounds = len(burst) // len(template(server)[0]) + 2
        paced = lines_for(server, int(args.rate * args.seconds), rounds)
        results.append(
            run_phase("paced", redis_server.url, server, bridge, paced, args.rate, lags)
        )
        stop.set()
        thread.join(60)
        for result in results:
            print(json.dumps(result))


if __name__ == "__main__":
    main()
