"""Record a real Synapse's Redis replication lines as test data for the bridge.

Run on purpose, not by pytest::

    .venv/bin/python -m tests.e2e.record_lines            # both engines
    .venv/bin/python -m tests.e2e.record_lines --engine sqlite

For each engine it starts a private Redis (and PostgreSQL), a Synapse main process
with ``worker1`` under the fixed server name ``synkafka.test``, subscribes before
Synapse starts, runs the e2e scenario, stops Synapse and writes every message as
``<channel>\\t<payload>`` to ``tests/data/synapse_lines/<engine>.txt``. Access tokens
in ``USER_IP`` lines are replaced with ``syt_masked_...`` fakes of the same shape;
the script refuses to write a line that still looks like a live token.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import redis

from adapter.devstack.services import PostgresCluster, RedisServer
from adapter.devstack.services.synapse import SynapseHomeserver
from tests.e2e.capture import RedisCapture, count_kinds, format_line
from tests.e2e.scenario import run_scenario

__all__ = ["DEFAULT_OUT", "SERVER_NAME", "main", "record"]

SERVER_NAME = "synkafka.test"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "synapse_lines"
_END_MARK = "SYNKAFKA_RECORDING_END"


def record(engine: str, out_dir: Path) -> Path:
    """Record one engine's lines and return the file written."""
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        dsn = None
        if engine == "postgres":
            cluster = stack.enter_context(PostgresCluster())
            dsn = cluster.create_database("synapse")
        capture = stack.enter_context(RedisCapture(redis_server.url, SERVER_NAME))
        hs = SynapseHomeserver(
            redis_server.url,
            database_dsn=dsn,
            server_name=SERVER_NAME,
            with_worker=True,
        )
        with hs:
            report = run_scenario(hs, capture)
        # Published after Synapse exited, so once it arrives every earlier line has.
        client = redis.Redis.from_url(redis_server.url)
        client.publish(SERVER_NAME, _END_MARK)
        client.close()
        capture.wait_for(lambda ln: ln.line == _END_MARK, timeout_s=10, what="end mark")
        lines = [ln for ln in capture.lines() if ln.line != _END_MARK]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{engine}.txt"
    path.write_text("".join(format_line(ln) + "\n" for ln in lines), encoding="utf-8")
    print(
        f"{path}: {len(lines)} lines; main ready {hs.ready_s:.2f} s, worker "
        f"{hs.worker_ready_s:.2f} s, scenario {report.elapsed_s:.2f} s"
    )
    for kind, count in sorted(count_kinds(lines).items()):
        print(f"  {kind}: {count}")
    return path


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and record the chosen engines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--engine", choices=["sqlite", "postgres", "all"], default="all"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    engines = ["sqlite", "postgres"] if args.engine == "all" else [args.engine]
    for engine in engines:
        record(engine, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
