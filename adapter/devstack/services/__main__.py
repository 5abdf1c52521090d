"""``python -m adapter.devstack.services``: fetch the Kafka jars, or run the stack by hand.

Commands:
    fetch-kafka   download the pinned Kafka jars into the cache (the Makefile's
                  install step), each checked against its pinned SHA-256; prints
                  what it did and where. ``--write-checksums`` pins a new version.
    up            start Kafka, PostgreSQL and Redis, print their addresses and keep
                  them running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from adapter.core.errors import ServiceError
from adapter.devstack.services.kafka import KAFKA_VERSION, fetch_kafka, jar_checksums
from adapter.devstack.services.stack import LocalStack

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _say(message: str) -> None:
    print(message, flush=True)  # noqa: T201  (this is a command-line tool)


def _pin(version: str) -> int:
    """Fetch ``version`` with Maven's SHA-1 checks only, and pin what came."""
    install = fetch_kafka(version, verify=False)
    target = Path(__file__).with_name(f"kafka-{version}.sha256")
    lines = [
        f"# SHA-256 of every jar the local Kafka {version} broker runs from",
        "# (fetch_kafka checks each one; Maven checks each download against the",
        "# SHA-1 the repository publishes). Written by: python -m adapter.devstack.services",
        f"# fetch-kafka --version {version} --write-checksums",
    ]
    lines += [f"{d}  {n}" for n, d in jar_checksums(install.libs_dir).items()]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _say(f"pinned {len(lines) - 4} jars in {target}; review and commit it")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    if args.write_checksums:
        return _pin(args.version)
    install = fetch_kafka(args.version)
    if install.downloaded:
        _say(
            f"fetched Apache Kafka {install.version} jars in {install.elapsed_s:.1f} s "
            f"into {install.libs_dir}"
        )
    else:
        _say(
            f"Apache Kafka {install.version} jars already cached in {install.libs_dir}"
        )
    return 0


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so the stack is stopped in order."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _up(args: argparse.Namespace) -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        with LocalStack(
            kafka=not args.no_kafka,
            postgres=not args.no_postgres,
            redis=not args.no_redis,
            progress=_say,
        ) as stack:
            for name, address in stack.addresses().items():
                _say(f"{name:9s} {address}")
            _say("Running; press Ctrl-C to stop.")
            while True:
                signal.pause()
    except KeyboardInterrupt:
        _say("Stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m adapter.devstack.services",
        description="Local Kafka, PostgreSQL and Redis for synkafka's tests and demo.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch-kafka", help="download the Kafka jars into the cache")
    fetch.add_argument("--version", default=KAFKA_VERSION, help="Kafka release")
    fetch.add_argument(
        "--write-checksums",
        action="store_true",
        help="pin the fetched jars' SHA-256 in adapter/devstack/services (a new version)",
    )
    fetch.set_defaults(run=_fetch)
    up = sub.add_parser("up", help="run the services until Ctrl-C")
    up.add_argument("--no-kafka", action="store_true")
    up.add_argument("--no-postgres", action="store_true")
    up.add_argument("--no-redis", action="store_true")
    up.set_defaults(run=_up)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.run(args)
    except ServiceError as exc:
        print(f"adapter.devstack.services: error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
