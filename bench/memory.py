"""Memory: peak RSS of a consumer process catching up a 1,000,000-row backlog.

The consumer runs as its own process, exactly as an operator runs it::

    python -m adapter consume --handler bench._common:count_then_stop ...

The handler touches every row and, once all ``--rows`` came, sends SIGTERM to its own
process (the consumer then finishes, commits and exits 0). The peak RSS is the child's
high-water mark ``VmHWM`` from ``/proc/<pid>/status``, read every 50 ms until it exits
(``ru_maxrss`` from ``wait4`` would include this parent's RSS at fork time); RSS is
also sampled every 0.5 s to show whether it stays flat. Two backlogs (``--mode``):

* ``kafka``: the rows are published first (Publisher; 80% events records, receipts and
  presence), the consumer replays them with ``--from earliest``;
* ``db``: ``--rows`` events are written to PostgreSQL with ``bulk_events``; the
  consumer's group is given a commit at the head with no token map, so it backfills
  every row from the database (``--db``) before going live.

Target (docs/benchmarks.md): under 250 MB.

Usage::

    .venv/bin/python -m bench.memory                     # both modes, 1,000,000 rows
    .venv/bin/python -m bench.memory --mode kafka --rows 200000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.errors import ConsumeError
from adapter.core.positions import encode_commit_metadata
from adapter.io.kafka.consumer import Committed, Consumer
from bench._common import (
    STREAMS,
    build_commands,
    ensure_topics,
    header,
    kafka,
    new_prefix,
    postgres,
    publish,
    spread,
)
from bench.backfill import write_events

TARGET_MB = 250.0


def _status_mb(pid: int) -> tuple[float, float] | None:
    """``(VmRSS, VmHWM)`` of a process in MB, or None once it is gone."""
    found: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line[:5]] = int(line.split()[1]) / 1024
    except OSError:
        return None
    if len(found) < 2:
        return None
    return found["VmRSS"], found["VmHWM"]


def run_consumer(
    bootstrap: str, prefix: str, rows: int, dsn: str | None, instance: str
) -> tuple[float, float, list[float]]:
    """Run the consumer process until it handled ``rows`` rows.

    Returns:
        (peak RSS in MB, seconds, RSS samples in MB).
    """
    command = [
        sys.executable,
        "-m",
        "adapter",
        "consume",
        "--bootstrap-servers",
        bootstrap,
        "--prefix",
        prefix,
        "--instance-name",
        instance,
        "--handler",
        "bench._common:count_then_stop",
        "--no-progress",
        "--metrics-port",
        "-1",
        "--log-level",
        "WARNING",
    ]
    for stream in STREAMS if dsn is None else ("events",):
        command += ["--stream", stream]
    command += ["--db", dsn] if dsn else ["--from", "earliest"]
    env = {**os.environ, "BENCH_EXPECT_ROWS": str(rows)}
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    samples: list[float] = []
    peak = 0.0
    last_sample = 0.0
    while True:
        pid, status, _ = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        got = _status_mb(child.pid)
        if got is not None:
            peak = max(peak, got[1])
            if time.monotonic() - last_sample >= 0.5:
                samples.append(got[0])
                last_sample = time.monotonic()
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"consumer exited {child.returncode}")
    return peak, elapsed, samples


def commit_head_without_tokens(
    bootstrap: str, prefix: str, group_instance: str
) -> None:
    """Give the group a commit at the head with an empty token map: backfill everything.

    The map must be ours (if empty): a commit without one is someone else's offset
    reset, which the consumer answers by replaying Kafka, not by reading the database.
    """
    consumer = Consumer(
        KafkaSettings(bootstrap_servers=bootstrap),
        topics.consumer_group(prefix, group_instance),
    )
    topic = topics.stream_topic(prefix, "events")
    deadline = time.monotonic() + 30
    head: int | None = None
    while head is None:  # a topic just created may have no leader yet
        try:
            head = consumer.watermarks(topic, 0)[1]
        except ConsumeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    consumer.commit([Committed(topic, 0, head, encode_commit_metadata({}))])
    consumer.close()


def _describe(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    quarter = max(1, len(samples) // 4)
    marks = [samples[min(i * quarter, len(samples) - 1)] for i in range(4)]
    return "RSS at 0/25/50/75% of the run: " + ", ".join(f"{m:.0f}" for m in marks)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mode", choices=("kafka", "db", "both"), default="both")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--dsn", help="an empty PostgreSQL database (db mode)")
    args = parser.parse_args(argv)

    results: dict[str, list[float]] = {}
    with kafka(args.bootstrap) as bootstrap:
        if args.mode in ("kafka", "both"):
            prefix = new_prefix("memory")
            ensure_topics(bootstrap, prefix)
            commands = build_commands(args.rows)
            publish(bootstrap, prefix, commands)
            header(
                "memory: catch up from Kafka (--from earliest)",
                backlog=f"{args.rows:,} rows in {len(commands):,} records",
            )
            del commands
            peaks = results["kafka"] = []
            for n in range(args.repeat):
                peak, seconds, samples = run_consumer(
                    bootstrap, prefix, args.rows, None, f"mem-{uuid.uuid4().hex[:8]}"
                )
                peaks.append(peak)
                print(
                    f"   run {n + 1}: peak RSS {peak:.0f} MB, {seconds:.1f} s "
                    f"({args.rows / seconds:,.0f} rows/s incl. start-up); "
                    f"{_describe(samples)}",
                    flush=True,
                )
        if args.mode in ("db", "both"):
            with postgres(args.dsn) as dsn:
                write_events(dsn, args.rows)
                prefix = new_prefix("memory")
                ensure_topics(bootstrap, prefix)
                header(
                    "memory: catch up from PostgreSQL (backfill)",
                    backlog=f"{args.rows:,} events rows",
                )
                peaks = results["db"] = []
                for n in range(args.repeat):
                    instance = f"mem-{uuid.uuid4().hex[:8]}"
                    commit_head_without_tokens(bootstrap, prefix, instance)
                    peak, seconds, samples = run_consumer(
                        bootstrap, prefix, args.rows, dsn, instance
                    )
                    peaks.append(peak)
                    print(
                        f"   run {n + 1}: peak RSS {peak:.0f} MB, {seconds:.1f} s "
                        f"({args.rows / seconds:,.0f} rows/s incl. start-up); "
                        f"{_describe(samples)}",
                        flush=True,
                    )
    for mode, peaks in results.items():
        worst = max(peaks)
        print(
            f"   {mode}: peak RSS {spread(peaks)} MB; target < {TARGET_MB:.0f} MB: "
            f"{'met' if worst < TARGET_MB else 'NOT met'}"
        )
    return {"peaks": results}


if __name__ == "__main__":
    main()
