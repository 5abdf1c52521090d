"""``python -m bench``: every benchmark, one after the other, each in its own process.

Each starts its own services and measures its baselines in the same run; see each
module's docstring. ``--rows`` scales the runtime benchmarks (consume, publish,
backfill, memory) down for a quick run; ``--only`` picks some. A separate process per
benchmark keeps one's heap and threads from weighing on the next.

    .venv/bin/python -m bench                            # the full 1,000,000-row runs
    .venv/bin/python -m bench --rows 100000 --only consume publish
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from collections.abc import Sequence

RUNTIME = ("consume", "publish", "backfill", "latency", "memory")
OTHERS = ("codec", "presence", "bridge", "feed", "feed_latency", "feed_scale")
SCALABLE = ("consume", "publish", "backfill", "memory")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows", type=int, help="rows for consume/publish/backfill/memory"
    )
    parser.add_argument(
        "--only", nargs="+", choices=RUNTIME + OTHERS, help="run only these"
    )
    args = parser.parse_args(argv)
    failed: list[str] = []
    for name in args.only or RUNTIME + OTHERS:
        if importlib.util.find_spec(f"bench.{name}") is None:
            continue
        command = [sys.executable, "-m", f"bench.{name}"]
        if args.rows and name in SCALABLE:
            command += ["--rows", str(args.rows)]
        started = time.perf_counter()
        print(f"$ {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
        print(f"   ({name}: {time.perf_counter() - started:.0f} s)\n", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
