"""Backfill: DatabaseReader.read against a bare psycopg read of the same rows.

Writes ``--rows`` events with ``SynapseWriter.bulk_events`` (COPY) into a fresh
PostgreSQL database (a private cluster from ``adapter.devstack.services`` unless ``--dsn``),
spread over 500 rooms, then reads them all back, ``--repeat`` times each, interleaved:

* **ours**: ``DatabaseReader.read("events", writer, 0, last)``: what a consumer's
  stream worker iterates, ``(token, typed rows)`` per token, every row touched;
* **floor**: psycopg 3 with a plain cursor running the *same SQL* as the events
  source's main query (``adapter.io.db.sources.events`` ``NEW_EVENTS``, same page size, same
  bounds), ``fetchall()`` per page, the next page from the page's highest token;
  rows are counted, nothing else;
* **one query** (reference): the same SQL once for the whole range, one ``fetchall()``.

Target (docs/benchmarks.md): ours >= 0.8 of the floor's rows/s.

Usage::

    .venv/bin/python -m bench.backfill                   # 1,000,000 rows, own PostgreSQL
    .venv/bin/python -m bench.backfill --rows 200000 --repeat 3
    .venv/bin/python -m bench.backfill --dsn postgresql://postgres@127.0.0.1:5432/db
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import psycopg

from adapter.devstack.writer import SynapseWriter
from adapter.io.db.connection import connect
from adapter.io.db.sources import DEFAULT_PAGE_SIZE
from adapter.io.db.sources.events import NEW_EVENTS
from adapter.io.db.synapse_schema import create_synapse_tables
from adapter.runtime.backfill import DatabaseReader
from bench._common import (
    fresh_heap,
    header,
    median,
    postgres,
    ratio_spread,
    spread,
    verdict,
)

TARGET = 0.8
WRITER = "event_persister1"


def write_events(dsn: str, rows: int) -> tuple[int, int]:
    """Write ``rows`` events; return the token range ``(first, last)``."""
    with connect(dsn, create=True) as conn:
        create_synapse_tables(conn)
        writer = SynapseWriter(conn, WRITER)
        result = writer.bulk_events(
            rows, room_ids=[f"!room{n:04d}:example.org" for n in range(500)]
        )
        conn.execute("ANALYZE")
    return result.first_token, result.last_token


def run_ours(dsn: str, lo: int, hi: int, rows: int) -> float:
    """Seconds for DatabaseReader.read to yield every row of ``(lo, hi]``."""
    started = time.perf_counter()
    reader = DatabaseReader(dsn)
    seen = 0
    for _token, typed in reader.read("events", WRITER, lo, hi):
        for row in typed:
            if row is not None:
                seen += 1
    elapsed = time.perf_counter() - started
    reader.close()
    assert seen == rows, (seen, rows)
    return elapsed


def _sql() -> str:
    return NEW_EVENTS.range_sql(per_writer=True).replace("?", "%s")


def run_floor(dsn: str, lo: int, hi: int, rows: int) -> float:
    """Seconds for a plain psycopg cursor to page through the same SQL."""
    sql = _sql()
    started = time.perf_counter()
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn,
        conn.cursor() as cur,
    ):
        seen = 0
        current = lo
        while True:
            page = cur.execute(sql, (current, hi, WRITER, DEFAULT_PAGE_SIZE)).fetchall()
            seen += len(page)
            if len(page) < DEFAULT_PAGE_SIZE:
                break
            current = max(r[0] for r in page)
    elapsed = time.perf_counter() - started
    assert seen == rows, (seen, rows)
    return elapsed


def run_one_query(dsn: str, lo: int, hi: int, rows: int) -> float:
    """Seconds for the same SQL over the whole range in one ``fetchall``."""
    sql = _sql()
    started = time.perf_counter()
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn,
        conn.cursor() as cur,
    ):
        seen = len(cur.execute(sql, (lo, hi, WRITER, rows + 1)).fetchall())
    elapsed = time.perf_counter() - started
    assert seen == rows, (seen, rows)
    return elapsed


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dsn", help="an empty PostgreSQL database to use")
    args = parser.parse_args(argv)

    with postgres(args.dsn) as dsn:
        started = time.perf_counter()
        first, last = write_events(dsn, args.rows)
        header(
            "backfill (PostgreSQL)",
            rows=f"{args.rows:,} events rows, tokens {first:,} to {last:,}",
            write=f"{time.perf_counter() - started:.1f} s with bulk_events (COPY)",
            page=f"{DEFAULT_PAGE_SIZE:,} rows",
        )
        lo = first - 1
        ours: list[float] = []
        floor: list[float] = []
        single: list[float] = []
        runs: dict[str, tuple[list[float], Callable[[], float]]] = {
            "ours": (ours, lambda: run_ours(dsn, lo, last, args.rows)),
            "floor": (floor, lambda: run_floor(dsn, lo, last, args.rows)),
            "one": (single, lambda: run_one_query(dsn, lo, last, args.rows)),
        }
        run_floor(dsn, lo, last, args.rows)  # untimed: warm PostgreSQL's cache
        for n in range(args.repeat):
            order = ("ours", "floor") if n % 2 == 0 else ("floor", "ours")
            for who in (*order, "one"):
                fresh_heap()
                results, run = runs[who]
                results.append(args.rows / run())
                print(
                    f"   run {n + 1} {who:6} {results[-1]:>12,.0f} rows/s", flush=True
                )
    ratio = median(ours) / median(floor)
    print(f"   ours (DatabaseReader.read)          {spread(ours)} rows/s")
    print(f"   floor (psycopg, same SQL, paged)    {spread(floor)} rows/s")
    print(f"   psycopg, same SQL, one query        {spread(single)} rows/s (reference)")
    print(
        f"   ours / floor = {ratio:.2f} (per run {ratio_spread(ours, floor)}); "
        f"target >= {TARGET}: {verdict(ratio, TARGET)}"
    )
    print(f"   ours / one query = {median(ours) / median(single):.2f}")
    return {"ours": ours, "floor": floor, "single": single, "ratio": ratio}


if __name__ == "__main__":
    main()
